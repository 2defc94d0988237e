"""The OpenAPI document of the API: behind the token, a valid OpenAPI 3 document (checked
with openapi-spec-validator), listing every promised route and method and nothing else, with
bodies and answers a client can rely on: the PUT body is the declarative file's
ScaleSetDocument schema, every reference resolves, refusals are the error shape (400, never
FastAPI's 422), and long work answers 202 with the operation."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from orchestrator.model import ScaleSetDocument
from tests.api.conftest import Api, error_of
from tests.api.spec import ACTIONS, PUBLIC, ROUTES

METHODS = {"get", "put", "patch", "delete", "post"}


@pytest.fixture(scope="module")
def document(web: Api) -> dict[str, Any]:
    answer = web.http.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    return answer.json()  # type: ignore[no-any-return]


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in document["paths"].items()
            for method, op in item.items() if method in METHODS]


def schema_of(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the document's components beside it, so that its references
    resolve as they do in the document."""
    return {**schema, "components": document["components"]}


def test_the_document_needs_the_token(web: Api) -> None:
    error_of(web.anonymous.get("/openapi.json"), 401)


def test_it_is_a_valid_openapi_3_document(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.")
    validate(document)  # raises on any error, unresolvable references included


def test_it_lists_every_route_and_method(document: dict[str, Any]) -> None:
    listed = {(method, path) for method, path, _ in operations(document)}
    assert listed == set(ROUTES) - {("GET", "/openapi.json")}


def test_every_operation_has_an_id_of_its_own(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(set(ids)) == len(ids)


def test_the_actions_are_listed(document: dict[str, Any]) -> None:
    op = document["paths"]["/v1/scaleSets/{name}/{action}"]["post"]
    [action] = [p for p in op["parameters"] if p["name"] == "action"]
    assert action["in"] == "path"
    assert set(action["schema"]["enum"]) == set(ACTIONS)


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [node["$ref"]] if "$ref" in node else [r for v in node.values()
                                                           for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    found = refs(document)
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in document["components"]["schemas"]
    assert "$defs" not in str(document)  # every model is a component, none inline


def test_the_put_body_is_the_scale_set_document(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/scaleSets/{name}"]["put"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ScaleSetDocument"}
    model = ScaleSetDocument.model_json_schema(by_alias=True,
                                               ref_template="#/components/schemas/{model}")
    components = document["components"]["schemas"]
    for name, definition in model.pop("$defs").items():
        assert components[name] == definition, name
    assert components["ScaleSetDocument"] == model
    # and a client validating its document with it agrees with the server
    check = jsonschema.Draft202012Validator(schema_of(document, schema))
    good = {"apiVersion": "orchestrator/v1", "kind": "ScaleSet", "metadata": {"name": "web"},
            "spec": {"image": "tiny:1", "capacity": 2, "healthProbe": {"port": 22}}}
    check.validate(good)
    assert not check.is_valid({**good, "spec": {**good["spec"], "bogus": 1}})
    assert not check.is_valid({**good, "spec": {**good["spec"], "healthProbe": {"port": "x"}}})


def test_refusals_are_the_error_shape_never_a_422(document: dict[str, Any], web: Api) -> None:
    error = document["components"]["schemas"]["Error"]
    for method, path, op in operations(document):
        responses = op["responses"]
        assert "422" not in responses, (method, path)
        expected = {"400", "404"} if "{" in path else set()
        if (method, path) not in PUBLIC:
            expected.add("401")
        if method != "GET":
            expected.add("413")
        if method != "GET" and not path.endswith("/cancel"):
            expected.add("503")
            if not path.endswith("/runCommand"):  # runs beside the set's lock
                expected.add("409")
        assert expected <= set(responses), (method, path, sorted(responses))
        for status in expected:
            content = responses[status]["content"]["application/json"]["schema"]
            assert content == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    check = jsonschema.Draft202012Validator(schema_of(document, error))
    check.validate(web.http.get("/v1/scaleSets/WEB").json())
    check.validate(web.anonymous.get("/v1/scaleSets").json())
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_long_work_answers_202_with_the_operation(document: dict[str, Any], api: Api) -> None:
    long_work = {(m, p) for m, p, op in operations(document) if "202" in op["responses"]}
    assert long_work == {(m, p) for m, p in ROUTES if m in ("PUT", "PATCH", "DELETE")} | {
        ("POST", p) for m, p in ROUTES if m == "POST" and not p.endswith("/cancel")}
    schema = document["components"]["schemas"]["Operation"]
    for method, path in long_work:
        answer = document["paths"][path][method.lower()]["responses"]["202"]
        assert answer["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Operation"}
        assert "Location" in answer["headers"]
    check = jsonschema.Draft202012Validator(schema_of(document, schema))
    started = api.http.put("/v1/scaleSets/web", json={
        "apiVersion": "orchestrator/v1", "kind": "ScaleSet", "metadata": {"name": "web"},
        "spec": {"image": "tiny:1", "capacity": 1}})
    check.validate(started.json())
    check.validate(api.wait(started))
    failed = api.wait(api.http.post("/v1/scaleSets/web/virtualMachines/0/runCommand",
                                    json={"script": "true"}))
    assert failed["status"] == "Failed"
    check.validate(failed)
    assert document["paths"]["/v1/operations/{id}"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"] == {"$ref": "#/components/schemas/Operation"}
