"""Schema-driven fuzzing of every endpoint from the OpenAPI document: no 500s.

Schemathesis generates valid (positive) and invalid (negative) requests for each
operation of the app's own OpenAPI document and calls the ASGI app directly.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from .conftest import API_KEY


@pytest.fixture(scope="module")
def fuzz_schema(ease_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from attnrec.serving import Settings, create_app

    import shutil

    d = tmp_path_factory.mktemp("fuzz")
    bundle = shutil.copytree(ease_bundle, d / "bundle")  # fuzzed deletions write its erasure list
    app = create_app(Settings(model_path=bundle, data_dir=d, api_key=API_KEY, watch_model=False,
                              max_k=50, max_batch=20, max_history=50))
    with TestClient(app):  # runs the lifespan: the model is loaded
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(fuzz_schema, mode):
    operations = [r.ok() for r in fuzz_schema.get_all_operations()]
    assert len(operations) >= 10
    failures, fuzzed = [], 0
    for op in operations:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call(headers={"X-API-Key": API_KEY})
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}"
                                f" -> {response.status_code} {response.text[:200]}")

        try:
            run()
            fuzzed += 1
        except Unsatisfiable:  # no parameters or body to break (e.g. GET /health)
            assert mode is GenerationMode.NEGATIVE
    assert fuzzed >= 6
    assert not failures, "\n".join(failures[:10])
