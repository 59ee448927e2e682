"""The ASGI middlewares every service's app runs in (`shared.http.install` adds them):
`ObserveRequests` outermost, then `RequestLimits`."""
import logging
import time
import uuid

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import metrics
from shared.auth_failures import AuthFailures, counted_for
from shared.db import is_outage
from shared.http_errors import error_response
from shared.logs import log_context

log = logging.getLogger(__name__)


class ObserveRequests:
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
        request_id = header(scope, b"x-request-id") or uuid.uuid4().hex
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


class RequestLimits:
    """Caps request bodies while they stream in, and tells the failed-auth limit who is asking.

    A declared Content-Length over the cap is answered 413 before the app runs; a body without
    one (chunked) is counted as the app reads it and refused at the first byte past the cap.
    uvicorn holds at most about 64 KiB of unread body per connection and drops what arrives
    after the response, so nothing past the cap is ever buffered."""

    def __init__(self, app, *, max_body_bytes: int, body_limits: dict[str, int], failures: AuthFailures):
        self.app, self.max_body_bytes, self.body_limits, self.failures = app, max_body_bytes, body_limits, failures

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # a handshake may carry a credential too (/v1/connect)
            with counted_for(self.failures, scope):
                return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.body_limits.get(scope["path"], self.max_body_bytes)
        declared = header(scope, b"content-length")
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

        with counted_for(self.failures, scope):
            try:
                await self.app(scope, limited_receive, send_tracked)
            except BodyTooLarge:
                if started:
                    raise
                await _too_large(limit)(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, "payload_too_large", f"request body larger than {limit} bytes")


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
