"""/openapi.json: valid OpenAPI 3.1, naming every route; schemathesis finds no server error.

Schemathesis generates requests for every operation from the document (bounded examples, in
process over ASGI) and fails on any 5xx or a response that breaks the documented shape.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.applications import Starlette
from starlette.routing import Route

from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.http.app import create_app
from control_plane.http.openapi import openapi_document
from control_plane.settings import Settings
from control_plane.storage.store import Store
from core import LocalKV
from tests.control_plane.http.test_app import AUTH, HERO, SECRET, TOKEN, ApiClient
from tests.factories import UNIT_KEY

EXAMPLES = max(5, int(os.environ.get("PERCH_FUZZ_EXAMPLES", "100")) // 4)


def _app(tmp: Path) -> Starlette:
    store = Store.from_url(f"sqlite:///{tmp / 'perch.db'}", UNIT_KEY)
    store.migrate()
    settings_ = Settings(admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp, learner_draws=10_000)
    app = create_app(settings_, store, LocalKVPublisher(LocalKV(tmp)), schedule=False)
    assert ApiClient(app).post("/v1/experiments", json=HERO, headers=AUTH).status_code == 201
    return app


def test_the_document_is_valid_openapi_3_1() -> None:
    OpenAPIV31SpecValidator(openapi_document()).validate()


def test_the_document_names_every_route_and_method(tmp_path: Path) -> None:
    app = _app(tmp_path)
    served = {
        (route.path.replace(":path", ""), method.lower())
        for route in app.routes
        if isinstance(route, Route) and route.include_in_schema
        for method in (route.methods or ()) - {"HEAD"}
    }
    documented = {
        (path, method)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert served == documented


OPERATIONS = [
    (path, method)
    for path, item in openapi_document()["paths"].items()
    for method in item
    if method != "parameters"
]


@pytest.fixture(scope="module")
def perch_schema(tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", _app(tmp_path_factory.mktemp("openapi")))


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_no_operation_has_a_server_error(
    perch_schema: schemathesis.BaseSchema, path: str, method: str
) -> None:
    operation = perch_schema[path][method.upper()]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=AUTH)
        assert response.status_code < 500, (
            case.method,
            case.formatted_path,
            response.status_code,
            response.text[:300],
        )

    run()
