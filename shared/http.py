"""HTTP pieces every service shares: the JSON error shape, health, readiness and metrics."""
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
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
    """OpenAPI `responses=` documenting the error shape for these status codes (401 and 422 always)."""
    return {code: {"model": ErrorBody} for code in (401, 422, *codes)}


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


def install(app: FastAPI, *, ready: Callable[[], Awaitable[dict[str, bool]]]) -> None:
    """Error handlers, request metrics, /healthz, /readyz and /metrics."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", _describe(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), str(exc.detail))

    app.add_middleware(_Observe)

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
    if token is None or not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise APIError(401, "unauthorized", "admin token required")
