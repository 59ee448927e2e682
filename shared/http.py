"""HTTP pieces every service shares: `install` (error handlers, health, readiness and metrics,
the request body cap and the failed-auth limit), JSON bodies read after auth, bearer tokens.

The error shape (shared.http_errors) and the failed-auth calls (shared.auth_failures) are
importable from here too, as every service's routes use them with the rest."""
import email.message
import hmac
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.auth_failures import AuthFailures, auth_failed, refuse_if_throttled
from shared.http_errors import APIError, error_response, error_responses
from shared.http_middleware import ObserveRequests, RequestLimits

__all__ = ["APIError", "auth_failed", "bearer_token", "error_response", "error_responses", "install",
           "json_body", "json_body_openapi", "refuse_if_throttled", "require_admin"]


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 422: "invalid_request",
                 429: "rate_limited", 503: "unavailable"}


def _describe(errors: list) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI, *, ready: Callable[[], Awaitable[dict[str, bool]]], settings,
            body_limits: dict[str, int] | None = None) -> None:
    """Error handlers, request metrics, the body cap (`settings.max_request_body_bytes`, or
    `body_limits[path]`), the failed-auth limit, /healthz, /readyz and /metrics."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", _describe(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), str(exc.detail))

    failures = AuthFailures(limit=settings.auth_failures_max, window_s=settings.auth_failure_window_s)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_request_body_bytes, body_limits=body_limits or {},
                       failures=failures)
    app.add_middleware(ObserveRequests)  # outermost: a 413 or 429 gets a request id and metrics too

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        checks = await ready()
        ok = all(checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                            status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def json_body(model: type[BaseModel], *, required: bool = True):
    """A dependency reading the JSON body into `model` (None for no body unless `required`).

    FastAPI reads a declared body before it runs any dependency; a route that takes its body
    from this dependency, listed after its auth dependency, never reads the body of a request
    it refuses. Document the body with `openapi_extra=json_body_openapi(app, model, ...)`."""
    adapter = TypeAdapter(model if required else model | None)

    async def read(request: Request):
        raw = await request.body()
        if not raw:
            if required:
                raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
            return None
        if not _is_json(request.headers.get("content-type")):
            raise RequestValidationError([{"type": "content_type", "loc": ("body",),
                                           "msg": "expected Content-Type: application/json"}])
        try:
            return adapter.validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                          for e in exc.errors(include_url=False)]) from None
    return read


def json_body_openapi(app: FastAPI, model: type[BaseModel], *, required: bool = True) -> dict:
    """`openapi_extra` for a route reading `json_body(model)`: the request body as FastAPI would
    document a declared one, with `model` added to the document's components."""
    models = getattr(app.state, "body_models", None)
    if models is None:
        models = app.state.body_models = []
        generate = app.openapi

        def openapi() -> dict:  # FastAPI's documented way to extend the generated document
            if app.openapi_schema is None:
                schemas = generate().setdefault("components", {}).setdefault("schemas", {})
                for m in models:
                    schemas.setdefault(m.__name__, m.model_json_schema(ref_template="#/components/schemas/{model}"))
            return app.openapi_schema
        app.openapi = openapi
    models.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    if required:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}
    return {"requestBody": {"content": {"application/json": {"schema": {"anyOf": [ref, {"type": "null"}],
                                                                          "title": "Body"}}}}}


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_admin(request: Request, admin_token: str) -> None:
    token = bearer_token(request)
    if token is not None and hmac.compare_digest(token.encode(), admin_token.encode()):
        return
    refuse_if_throttled()
    if token is not None:
        auth_failed()
    raise APIError(401, "unauthorized", "admin token required")
