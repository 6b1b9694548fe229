# Two commands for a fresh machine:  `make demo` (run the app)  and  `make test` (run the tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export WORKDIR ?= $(CURDIR)/workdir

.PHONY: demo test venv app lint clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

app:
	@bash scripts/build-app.sh

test: venv app
	bash scripts/test-deps.sh
	cd retrieval-app && npm test --silent
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check imageretrieval retrievalapi benchmarks tests scripts

demo: venv app
	bash scripts/demo.sh
