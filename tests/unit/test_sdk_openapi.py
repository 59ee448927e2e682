"""The SDK's models and calls cannot drift from the API: each SDK call is run against the OpenAPI
document (docs/openapi/sessions.json, itself kept fresh from the code by test_docs_fresh.py).

For each call: the method and path it sends must be an operation of the document, answered with a
schema whose every property the SDK model has, with the same type and nullability, required by the
SDK only where the document requires it, and no SDK field the document lacks; an
example answer built from that schema must parse. A route DESIGN.md specifies before the server
has it goes in PENDING (empty now: the document has every SDK call), the only calls allowed to be
missing from it."""
import datetime
import inspect
import json
import re
import sys
import types
import typing
from decimal import Decimal
from pathlib import Path

import httpx
import pydantic
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

import browserfleet  # noqa: E402
from browserfleet import _models  # noqa: E402

DOC = json.loads((ROOT / "docs" / "openapi" / "sessions.json").read_text())
SCHEMAS = DOC["components"]["schemas"]
SID, PID = "6f1c2f0e-8d7a-4c1b-9f0e-2a3b4c5d6e7f", "0b6e2c1a-3d4f-4a5b-8c7d-9e0f1a2b3c4d"

# (SDK call, the model it returns)
CALLS = {
    "sessions.create": (lambda bf: bf.sessions.create(timeout_s=60), browserfleet.SessionCreated),
    "sessions.retrieve": (lambda bf: bf.sessions.retrieve(SID), browserfleet.Session),
    "sessions.list": (lambda bf: bf.sessions.list(status="running", limit=5).data, _models.SessionPage),
    "sessions.end": (lambda bf: bf.sessions.end(SID), browserfleet.Session),
    "usage.retrieve": (lambda bf: bf.usage.retrieve(), browserfleet.Usage),
    "profiles.create": (lambda bf: bf.profiles.create(name="shop"), browserfleet.Profile),
    "profiles.list": (lambda bf: bf.profiles.list().data, _models.ProfilePage),
    "profiles.retrieve": (lambda bf: bf.profiles.retrieve(PID), browserfleet.Profile),
    "profiles.delete": (lambda bf: bf.profiles.delete(PID), None),
    "sessions.downloads.list": (lambda bf: bf.sessions.downloads.list(SID), _models.DownloadList),
    "sessions.downloads.get": (lambda bf: bf.sessions.downloads.get(SID, "a.pdf"), bytes),
}
# DESIGN.md routes the document does not have yet: (method, path) as the SDK sends them.
PENDING: dict[str, tuple[str, str]] = {}
# SDK fields from DESIGN.md ahead of the document: allowed to be absent from it, checked once present.
AHEAD_FIELDS: set = set()
AHEAD_CREATE_OPTIONS: set[str] = set()
# Public operations outside the SDK's scope (the dashboard's and key management's own); any
# /v1/dashboard/... operation is the dashboard's.
NOT_IN_SDK = {("GET", "/v1/sessions/{session_id}/screenshot"), ("GET", "/v1/usage/daily"),
              ("GET", "/v1/api-keys"), ("POST", "/v1/api-keys"), ("DELETE", "/v1/api-keys/{key_id}")}


def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def example(schema: dict):
    """A value the schema allows, every optional property and non-null branch filled in."""
    schema = resolve(schema)
    if "anyOf" in schema:
        return example(next(s for s in schema["anyOf"] if s.get("type") != "null"))
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {name: example(prop) for name, prop in schema.get("properties", {}).items()}
    if kind == "array":
        return [example(schema["items"])]
    if kind == "string":
        return {"date-time": "2026-12-01T09:00:00Z", "uuid": SID}.get(schema.get("format"), "0.0100")
    return {"integer": 7, "boolean": True, "number": 1.5}[kind]


def doc_type(schema: dict):
    """(kind, nullable) of a property in the document."""
    schema = resolve(schema)
    if "anyOf" in schema:
        rest = [s for s in schema["anyOf"] if s.get("type") != "null"]
        assert len(rest) == 1, schema
        return doc_type(rest[0])[0], True
    if "enum" in schema:
        return ("enum", frozenset(schema["enum"])), False
    kind = schema["type"]
    if kind == "object":
        return ("object", schema.get("title")), False
    if kind == "array":
        return ("list", doc_type(schema["items"])[0]), False
    if kind == "string":
        return ("datetime" if schema.get("format") == "date-time" else "str"), False
    return kind, False


def sdk_type(annotation):
    """(kind, nullable) of a model field, in doc_type's terms. Decimal is money: a string in JSON."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(rest) == 1, annotation
        return sdk_type(rest[0])[0], True
    if typing.get_origin(annotation) is typing.Literal:
        return ("enum", frozenset(typing.get_args(annotation))), False
    if typing.get_origin(annotation) is list:
        return ("list", sdk_type(typing.get_args(annotation)[0])[0]), False
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return ("object", annotation), False
    return {str: "str", Decimal: "str", int: "integer", bool: "boolean", float: "number",
            datetime.datetime: "datetime"}[annotation], False


def check_model(model: type[pydantic.BaseModel], schema: dict, where: str) -> list[str]:
    schema = resolve(schema)
    if "anyOf" in schema:  # a nullable object: its object branch
        schema = resolve(next(s for s in schema["anyOf"] if s.get("type") != "null"))
    props, required = schema.get("properties", {}), set(schema.get("required", []))
    problems = [f"{where}.{name}: in the document, not in {model.__name__}" for name in props
                if name not in model.model_fields]
    for name, field in model.model_fields.items():
        if name not in props:
            if (model, name) not in AHEAD_FIELDS and not any(
                    issubclass(model, m) and n == name for m, n in AHEAD_FIELDS):
                problems.append(f"{where}.{name}: in {model.__name__}, not in the document")
            continue
        if field.is_required() and name not in required:  # the SDK must accept every answer the document allows
            problems.append(f"{where}.{name}: optional in the document, required in {model.__name__}")
        (want, want_null), (have, have_null) = doc_type(props[name]), sdk_type(field.annotation)
        if want_null != have_null:
            problems.append(f"{where}.{name}: nullable {want_null} in the document, {have_null} in the SDK")
        problems += compare_kind(want, have, props[name], f"{where}.{name}")
    return problems


def compare_kind(want, have, prop: dict, where: str) -> list[str]:
    if isinstance(want, tuple) and want[0] == "list" and isinstance(have, tuple) and have[0] == "list":
        items = resolve(prop).get("items") or next(s for s in resolve(prop)["anyOf"] if "items" in s)["items"]
        return compare_kind(want[1], have[1], items, where + "[]")
    if isinstance(want, tuple) and want[0] == "object" and isinstance(have, tuple) and have[0] == "object":
        return check_model(have[1], prop, where)
    return [] if want == have else [f"{where}: {want} in the document, {have} in the SDK"]


def operation(method: str, sent_path: str):
    """The document's operation whose path template matches the path the SDK sent."""
    for template, ops in DOC["paths"].items():
        if re.fullmatch(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)), sent_path) and method.lower() in ops:
            return template, ops[method.lower()]
    return None, None


def run(call):
    """Run one SDK call against the document: answer each request with an example of its success schema."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        template, op = operation(request.method, request.url.path)
        seen.append((request, template, op))
        if op is None:  # a PENDING route: answer from the model itself
            return httpx.Response(599)
        status, answer = next((s, r) for s, r in op["responses"].items() if s.startswith("2"))
        content = answer.get("content", {}).get("application/json")
        if content is None:
            return httpx.Response(int(status), content=b"file")
        return httpx.Response(int(status), json=example(content["schema"]))

    bf = browserfleet.Browserfleet(api_key="k", base_url="http://doc.test", max_retries=0,
                                   http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    try:
        return seen, call(bf)
    except browserfleet.APIError as exc:  # a PENDING route (599), or an answer the model refused
        return seen, exc


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_sdk_call_matches_the_document(name):
    call, model = CALLS[name]
    [(request, template, op)] = run(call)[0]
    if op is None:
        assert name in PENDING, f"{name} sent {request.method} {request.url.path}: no such operation in the document"
        assert (request.method, request.url.path) == PENDING[name]
        return
    status, answer = next((s, r) for s, r in op["responses"].items() if s.startswith("2"))
    content = answer.get("content", {}).get("application/json")
    if model is None or model is bytes:
        return
    assert content, f"{name}: {template} has no JSON answer in the document"
    problems = check_model(model, content["schema"], name)
    assert not problems, "\n".join(problems)
    result = run(call)[1]
    assert not isinstance(result, Exception), f"{name}: a document-shaped answer does not parse: {result}"


def test_every_error_status_of_the_sdks_operations_has_its_exception():
    from browserfleet._errors import _BY_STATUS
    statuses = set()
    for call, _ in CALLS.values():
        for _request, _template, op in run(call)[0]:
            statuses |= {int(s) for s in (op or {}).get("responses", {}) if s[0] in "45"}
    assert statuses - set(_BY_STATUS) == set(), "an error status of the document without its exception class"
    assert check_model(_models.ErrorBody, SCHEMAS["ErrorBody"], "ErrorBody") == []


def test_create_options_are_the_documents_request_body():
    from browserfleet.resources.sessions import AsyncSessions, Sessions
    body = resolve(SCHEMAS["CreateSession"])
    for cls in (Sessions, AsyncSessions):
        options = set(inspect.signature(cls.create).parameters) - {"self", "idempotency_key"}
        missing = set(body["properties"]) - options
        assert not missing, f"{cls.__name__}.create lacks options of the document: {missing}"
        assert options - set(body["properties"]) <= AHEAD_CREATE_OPTIONS
    header = [p for p in DOC["paths"]["/v1/sessions"]["post"]["parameters"] if p["in"] == "header"]
    assert [p["name"] for p in header] == ["idempotency-key"]


def test_list_filters_are_the_documents_query():
    params = {p["name"]: p for p in DOC["paths"]["/v1/sessions"]["get"]["parameters"]}
    assert set(params) == {"status", "limit", "cursor"}
    assert sdk_type(_models.SessionStatus)[0] == doc_type(params["status"]["schema"])[0]


def test_every_public_operation_is_in_the_sdk_or_known_to_be_outside_it():
    covered = set()
    for name, (call, _) in CALLS.items():
        for request, template, op in run(call)[0]:
            if template:
                covered.add((request.method, template))
    public = {(method.upper(), template) for template, ops in DOC["paths"].items() for method, op in ops.items()
              if "admin" not in op.get("tags", []) and not template.startswith(("/v1/admin", "/v1/dashboard/"))}
    assert public - covered - NOT_IN_SDK == set(), "a public operation the SDK does not offer"


def test_the_check_sees_drift():
    class Drifted(pydantic.BaseModel):
        id: str
        status: str  # an enum in the document
        timeout_s: str  # an integer there
        warm: bool  # nullable there
        flavour: str  # not there at all
        # and every other SessionOut property is missing
    problems = "\n".join(check_model(Drifted, SCHEMAS["SessionOut"], "SessionOut"))
    for expected in ("SessionOut.status: ('enum'", "SessionOut.timeout_s: integer in the document, str",
                     "SessionOut.warm: nullable True", "SessionOut.flavour: in Drifted, not in the document",
                     "SessionOut.cost: in the document, not in Drifted"):
        assert expected in problems, problems
