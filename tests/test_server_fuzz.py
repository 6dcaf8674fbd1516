"""Property-based fuzzing of every endpoint from the published OpenAPI schema (schemathesis).

Valid and invalid requests are generated from ``/openapi.json``. Every response must be a
non-5xx status the schema documents, with a body and content type that match it; invalid
requests must be rejected, and valid text searches accepted. Examples are derandomised (the
same inputs on every run) and few, so the module stays around ten seconds.

(Driven through ``APIOperation.as_strategy`` rather than ``schemathesis.pytest.from_fixture``,
whose node-id handling breaks on pytest 9.)
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import positive_data_acceptance  # noqa: E402

from serving.app import create_app  # noqa: E402
from test_server_kit import config_for  # noqa: E402

EXAMPLES = int(os.environ.get("EMBEDX_FUZZ_EXAMPLES", "15"))   # raise it for a deeper local run
OPERATIONS = [("POST", "/v1/search"), ("POST", "/v1/search/batch"), ("POST", "/v1/search/vector"),
              ("POST", "/v1/search/vector/batch"), ("GET", "/v1/indexes"), ("POST", "/v1/admin/swap"),
              ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
# Valid by the schema yet refused for reasons it cannot state (a vector's width must match the
# collection's index, indices and values must pair up, a swapped-in path must hold a bundle):
# for these, 400 on schema-valid input is right, so the "valid data is accepted" check is off.
SEMANTIC_400 = {"/v1/search/vector", "/v1/search/vector/batch", "/v1/admin/swap"}


@pytest.fixture(scope="module")
def api_schema(workspace):
    app = create_app(config_for(workspace, limits={"max_batch": 8, "max_k": 50, "max_query_chars": 200,
                                                   "max_vector_dim": 64, "request_timeout_s": 30}))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.server.close()


def test_every_operation_is_fuzzed(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests(api_schema, method, path, mode):
    operation = api_schema[path][method]
    if mode is GenerationMode.NEGATIVE and method == "GET":
        pytest.skip("no parameters or body to make invalid")
    excluded = [positive_data_acceptance] if path in SEMANTIC_400 else []
    cases = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        # Random collection names nearly always miss; name the real one half the time so valid
        # requests reach the search and swap code, not just the 404.
        cases = st.tuples(cases, st.booleans()).map(lambda pair: _with_collection(*pair))

    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(excluded_checks=excluded)

    check()


def _with_collection(case, real: bool):
    if real and isinstance(case.body, dict) and "collection" in case.body:
        case.body["collection"] = "demo"
    return case
