"""HTTP pieces every service shares: the JSON error shape, health, readiness and metrics, the
request body cap, and the per-address limit on failed authentications."""
import email.message
import hmac
import ipaddress
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import metrics
from shared.db import is_outage
from shared.logs import log_context

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The one error shape of every service: {"error": {"code", "message"}}."""
    error: ErrorDetail


def error_responses(*codes: int) -> dict:
    """OpenAPI `responses=` documenting the error shape for these status codes (401, 422 and 429 always)."""
    return {code: {"model": ErrorBody} for code in sorted({401, 422, 429, *codes})}


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


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
    app.add_middleware(_Limits, max_body_bytes=settings.max_request_body_bytes, body_limits=body_limits or {},
                       failures=failures)
    app.add_middleware(_Observe)  # outermost: a 413 or 429 gets a request id and metrics too

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


class _Observe:
    """Request ids, log context, metrics, and the last word on errors.

    A pure ASGI middleware, outermost of the app's own: an exception no handler took becomes
    the JSON error (503 when a dependency is down) here, so the client gets an answer on a
    connection that stays usable (Starlette's ServerErrorMiddleware would answer and then
    re-raise, and uvicorn closes the connection under the next keep-alive request)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        status = 500
        response_started = False

        async def send_observed(message):
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        token = log_context.set({"request_id": request_id, "trace_id": request_id})
        try:
            await self.app(scope, receive, send_observed)
        except Exception as exc:
            if response_started:
                raise
            log.exception("request failed", extra={"path": scope.get("path"), "outage": is_outage(exc)})
            response = (error_response(503, "unavailable", "a dependency is unavailable, retry later")
                        if is_outage(exc) else error_response(500, "internal_error", "internal error"))
            await response(scope, receive, send_observed)
        finally:
            log_context.reset(token)
            path = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(scope["method"], path, status).inc()
            metrics.HTTP_DURATION.labels(scope["method"], path).observe(time.perf_counter() - started)


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once a body passes the cap. An HTTPException, so FastAPI's body
    parsing lets it through to the JSON error handler (it turns other errors into a 400)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")


class _Limits:
    """Caps request bodies while they stream in, and tells the failed-auth limit who is asking.

    A declared Content-Length over the cap is answered 413 before the app runs; a body without
    one (chunked) is counted as the app reads it and refused at the first byte past the cap.
    uvicorn holds at most about 64 KiB of unread body per connection and drops what arrives
    after the response, so nothing past the cap is ever buffered."""

    def __init__(self, app, *, max_body_bytes: int, body_limits: dict[str, int], failures: "AuthFailures"):
        self.app, self.max_body_bytes, self.body_limits, self.failures = app, max_body_bytes, body_limits, failures

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # a handshake may carry a credential too (/v1/connect)
            token = _client.set((self.failures, client_address(scope)))
            try:
                return await self.app(scope, receive, send)
            finally:
                _client.reset(token)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.body_limits.get(scope["path"], self.max_body_bytes)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(limit)(scope, receive, send)
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        token = _client.set((self.failures, client_address(scope)))
        try:
            await self.app(scope, limited_receive, send_tracked)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(limit)(scope, receive, send)
        finally:
            _client.reset(token)


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, "payload_too_large", f"request body larger than {limit} bytes")


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


class AuthFailures:
    """Failed authentications per client address in fixed windows, in this process only (so each
    replica counts its own). At `limit` failures in a window the address gets 429 until the
    window ends. Successes never reset the count: one good credential cannot launder guesses.
    At most `max_clients` addresses are remembered (the stalest is forgotten first)."""

    def __init__(self, *, limit: int, window_s: float, max_clients: int = 100_000):
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._windows: dict[str, list] = {}  # address -> [window start, failures]

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again; 0 when it may now."""
        window = self._windows.get(client)
        if self.limit <= 0 or window is None or window[1] < self.limit:
            return 0
        return max(0, math.ceil(window[0] + self.window_s - time.monotonic()))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        window = self._windows.pop(client, None)
        if window is None or now >= window[0] + self.window_s:
            window = [now, 0]
        window[1] += 1
        self._windows[client] = window  # re-inserted: the dict's order is staleness
        while len(self._windows) > self.max_clients:
            del self._windows[next(iter(self._windows))]


# The failed-auth limit and the client address of the request being served (set by _Limits),
# so any credential check can use them without each route passing them down.
_client: ContextVar[tuple[AuthFailures, str] | None] = ContextVar("auth_client", default=None)


def client_address(scope) -> str:
    """The client's address (uvicorn puts X-Forwarded-For there from FORWARDED_ALLOW_IPS);
    IPv6 clients by their /64, the block one subscriber usually holds."""
    host = (scope.get("client") or ("unknown", 0))[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


def refuse_if_throttled() -> None:
    """429 when this request's client has failed to authenticate too often lately. Call it only
    where checking the credential would cost something; a credential that is free to verify and
    right is accepted whatever its address did."""
    current = _client.get()
    if current is not None and (wait := current[0].retry_after(current[1])):
        raise APIError(429, "rate_limited", f"too many failed authentications from this address; "
                       f"retry in {wait} s", headers={"Retry-After": str(wait)})


def auth_failed() -> None:
    """Count a failed authentication against this request's client."""
    current = _client.get()
    if current is not None:
        current[0].failed(current[1])


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


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
