"""Property-based run of the API against its own OpenAPI schema (schemathesis + hypothesis, bounded).

Generated inputs, valid and invalid, must never produce a server error, and every answer must match
the documented status codes, content types and response schemas; invalid inputs must be refused.
(Driven by hand: schemathesis' pytest plugin does not support this pytest version.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from retrievalapi import create_app
from retrievalapi.settings import ApiSettings

MAX_EXAMPLES = 10
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
WRITES = ["POST /api/products", "PUT /api/products/{product_id}", "PATCH /api/products/{product_id}",
          "DELETE /api/products/{product_id}", "POST /api/products/batch"]
WITH_INPUT = ["GET /api/products/{product_id}", "GET /api/images/{product_id}", "POST /api/search",
              "POST /api/search/by-id", "POST /api/search/text", *WRITES]
OPERATIONS = ["GET /api/health", "GET /api/ready", "GET /api/models", "GET /api/facets", "GET /api/metrics",
              "GET /api/products/{product_id}", "GET /api/images/{product_id}", "POST /api/search",
              "POST /api/search/by-id", "POST /api/search/text", *WRITES]


@pytest.fixture(scope="module")
def write_key(api_workdir) -> dict[str, str]:
    from imageretrieval.keys import KeyStore

    return {"Authorization": f"Bearer {KeyStore(api_workdir).create('fuzz', 'write')[1]}"}


@pytest.fixture(scope="module")
def api_workdir(synthetic_catalog, built_workdir, tmp_path_factory):
    """A copy: generated writes must not change the workdir other tests share."""
    import shutil

    from imageretrieval.training.text import train_text_projection

    from .conftest import make_settings

    workdir = tmp_path_factory.mktemp("fuzz") / "wd"
    shutil.copytree(built_workdir, workdir)
    train_text_projection(make_settings(synthetic_catalog, workdir), "tiny", "hashing-64", epochs=2, hidden=32,
                          batch=32, progress=False)  # the text routes searched for real
    return workdir


@pytest.fixture(scope="module")
def api_schema(synthetic_catalog, api_workdir, write_key):
    app = create_app(ApiSettings(dataset_root=synthetic_catalog, workdir=api_workdir, device="cpu",
                                 precision="fp32", default_model="tiny", models="tiny", max_upload_mb=0.25,
                                 app_dist=api_workdir / "no-app", write_burst=10_000))
    yield schemathesis.openapi.from_asgi("/api/openapi.json", app)
    shutdown_lifespans()  # schemathesis started the app's lifespan: drain and stop its batchers now


def test_schema_lists_every_route(api_schema):
    labels = {op.ok().label for op in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize(("label", "mode"), [(op, GenerationMode.POSITIVE) for op in OPERATIONS]
                         + [(op, GenerationMode.NEGATIVE) for op in WITH_INPUT],
                         ids=[f"{op}-valid" for op in OPERATIONS] + [f"{op}-invalid" for op in WITH_INPUT])
def test_operation_conforms(api_schema, write_key, label, mode):
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None
    checks = CHECKS + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        case.call_and_validate(checks=checks, headers=write_key if label in WRITES else None)

    run()
