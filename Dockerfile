# syntax=docker/dockerfile:1
# Three images from one file (docker-compose.yml builds them):
#   --target indexer : the whole `imageretrieval` CLI with CPU-only PyTorch (builds indexes, trains, evaluates)
#   --target api     : the FastAPI search service without PyTorch: it runs the ONNX model that
#                      `imageretrieval index` stored beside each index (requirements-serve.txt)
#   --target app     : nginx serving the built web app and proxying /api to the API
ARG PYTHON_VERSION=3.11

# ----- the web app, built with Node -----------------------------------------------------------
FROM node:20-bookworm-slim AS app-build
WORKDIR /src
COPY retrieval-app/package.json retrieval-app/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY retrieval-app/ ./
RUN npm run build

# ----- an empty virtualenv; each build stage installs its requirements, then the package -----
FROM python:${PYTHON_VERSION}-slim-bookworm AS venv-base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /build

# ----- the whole CLI's dependencies (copied alone into the indexer image) ----------------------
FROM venv-base AS indexer-build
COPY requirements.txt ./
# CPU-only PyTorch first, at the versions requirements.txt pins (no CUDA libraries: gigabytes
# smaller); `pip install -r` then finds torch/torchvision already satisfied.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==$(sed -n 's/^torch==//p' requirements.txt)" \
        "torchvision==$(sed -n 's/^torchvision==//p' requirements.txt)" \
 && pip install -r requirements.txt
COPY pyproject.toml README.md ./
COPY imageretrieval ./imageretrieval
COPY retrievalapi ./retrievalapi
RUN pip install --no-deps . \
 && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

# ----- the serving dependencies alone: no PyTorch (copied alone into the API image) -------------
FROM venv-base AS api-build
COPY requirements-serve.txt ./
RUN pip install -r requirements-serve.txt
COPY pyproject.toml README.md ./
COPY imageretrieval ./imageretrieval
COPY retrievalapi ./retrievalapi
RUN pip install --no-deps . \
 && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

# ----- what the indexer and API images share: a non-root user and the settings ---------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS python-runtime
RUN useradd --create-home --uid 10001 retrieval \
 && mkdir -p /data /workdir \
 && chown retrieval:retrieval /workdir
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATASET_ROOT=/data/fashion-product-small \
    WORKDIR_ROOT=/workdir \
    DEVICE=cpu
USER 10001
WORKDIR /home/retrieval

# ----- the indexer image: the whole CLI --------------------------------------------------------
FROM python-runtime AS indexer
COPY --from=indexer-build /opt/venv /opt/venv
CMD ["imageretrieval", "index"]

# ----- the API image ------------------------------------------------------------------------------
FROM python-runtime AS api
COPY --from=api-build /opt/venv /opt/venv
ENV MAX_UPLOAD_MB=10
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/ready', timeout=4)"]
CMD ["imageretrieval", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ----- the web app image: nginx ---------------------------------------------------------------
FROM nginx:1.27-alpine AS app
# The nginx image fills /etc/nginx/templates/*.template from the environment (envsubst) at start.
RUN rm -f /etc/nginx/conf.d/default.conf
COPY retrieval-app/nginx.conf /etc/nginx/templates/default.conf.template
COPY --from=app-build /src/dist /usr/share/nginx/html
ENV API_UPSTREAM=api:8000 \
    LISTEN=80 \
    APP_ROOT=/usr/share/nginx/html \
    MAX_UPLOAD_MB=10 \
    CLIENT_MAX_BODY_SIZE=11m \
    MAX_BATCH_UPLOAD_MB=200 \
    BATCH_CLIENT_MAX_BODY_SIZE=201m
EXPOSE 80
HEALTHCHECK --interval=15s --timeout=5s --retries=3 CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
