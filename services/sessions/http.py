"""Public API, admin API keys and the CDP websocket: parse, call a handler, shape the answer."""
from datetime import datetime
from typing import Literal
from uuid import UUID

from fastapi import Depends, FastAPI, Header, Query, Request, WebSocket
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from services.sessions import gateway, handlers
from services.sessions.adapters import cdp
from services.sessions.dashboard import routes as dashboard
from shared import http
from shared.http import APIError, error_responses


class SessionOut(BaseModel):
    id: UUID
    status: Literal["starting", "running", "completed", "failed"]
    browser: str
    warm: bool | None
    keep_alive: bool
    timeout_s: int
    idle_timeout_s: int
    created_at: datetime
    started_at: datetime | None
    expires_at: datetime | None
    ended_at: datetime | None
    duration_ms: int | None
    cost: str | None
    end_reason: str | None


class SessionCreated(SessionOut):
    cdp_url: str
    remaining_credits: int


class SessionPage(BaseModel):
    data: list[SessionOut]
    next_cursor: str | None


class Usage(BaseModel):
    plan: str
    status: str
    period_start: datetime | None
    period_end: datetime | None
    credits_granted: int
    credits_used: int
    credits_remaining: int
    sessions_running: int


class TenantOut(BaseModel):
    tenant_id: UUID
    plan: str
    status: str
    provisioned: bool
    max_concurrent_sessions: int
    max_session_seconds: int
    period_start: datetime | None
    period_end: datetime | None
    credits_granted: int
    credits_used: int
    credits_remaining: int
    sessions_running: int
    api_keys: int


class TenantList(BaseModel):
    data: list[TenantOut]


class AdminSessionOut(SessionOut):
    tenant_id: UUID


class AdminSessionList(BaseModel):
    data: list[AdminSessionOut]


class ApiKeyCreated(BaseModel):
    id: UUID
    api_key: str


DESCRIPTION = """Create remote headless browser sessions and drive them over CDP.

Auth: `Authorization: Bearer <api key>` (admin routes: the admin token). Errors are
`{"error": {"code", "message"}}`. A tenant that has paid but is not provisioned yet gets
403 `subscription_inactive` (retry shortly).

**CDP relay**: `WS /v1/sessions/{id}/cdp?token=…` is the `cdp_url` of a created session (give it
to Playwright's `connect_over_cdp` or Puppeteer's `connect`). A wrong token or a session that
is not running refuses the handshake (403). When the session ends, the socket closes with code
4001 client, 4002 timeout, 4003 idle, 4004 disconnected, 4005 browser_crashed, 4006 canceled.
Without `keep_alive`, closing the socket ends the session after a short grace period; with
it, the same URL reconnects while the session runs. At most `MAX_RELAYS_PER_SESSION` (4)
sockets of one session are open at once: the next handshake is refused with 429
`too_many_relays`. A CDP message larger than `MAX_CDP_MESSAGE_BYTES` (64 MiB) in either
direction closes its socket with 1009; the session goes on and the URL connects again."""


def create_app(*, runtime, settings, lease, api_keys: handlers.ApiKeys, relays: gateway.Relays) -> FastAPI:
    app = FastAPI(title="browserfleet sessions", version="1", description=DESCRIPTION)
    http.install(app, ready=runtime.ready, settings=settings)
    pool, bearer = runtime.pool, HTTPBearer(auto_error=False)
    api_keys = dashboard.auth(api_keys, settings)  # API keys, plus dashboard-link sign-ins
    app.include_router(dashboard.router(pool=pool, settings=settings, auth=api_keys))

    async def tenant(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> UUID:
        return await api_keys.tenant_for(creds.credentials if creds else None)

    def admin(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        http.require_admin(request, settings.admin_token.get_secret_value())

    @app.post("/v1/admin/tenants/{tenant_id}/api-keys", status_code=201, response_model=ApiKeyCreated,
              responses=error_responses(404, 409), dependencies=[Depends(admin)], tags=["admin"])
    async def create_api_key(tenant_id: UUID):
        return await handlers.create_api_key(pool=pool, tenant_id=tenant_id, max_live=settings.max_api_keys_per_tenant)

    @app.delete("/v1/admin/api-keys/{key_id}", status_code=204, responses=error_responses(404),
                dependencies=[Depends(admin)], tags=["admin"])
    async def revoke_api_key(key_id: UUID):
        await api_keys.revoke(key_id)
        return Response(status_code=204)

    @app.get("/v1/admin/tenants", response_model=TenantList, responses=error_responses(),
             dependencies=[Depends(admin)], tags=["admin"])
    async def admin_tenants(limit: int = Query(200, ge=1, le=1000)):
        return await handlers.admin_list_tenants(pool=pool, limit=limit)

    @app.get("/v1/admin/tenants/{tenant_id}", response_model=TenantOut, responses=error_responses(404),
             dependencies=[Depends(admin)], tags=["admin"])
    async def admin_tenant(tenant_id: UUID):
        return await handlers.admin_tenant(pool=pool, tenant_id=tenant_id)

    @app.get("/v1/admin/sessions", response_model=AdminSessionList, responses=error_responses(),
             dependencies=[Depends(admin)], tags=["admin"])
    async def admin_sessions(tenant_id: UUID | None = None,
                             status: Literal["starting", "running", "completed", "failed"] | None = None,
                             limit: int = Query(50, ge=1, le=1000)):
        """Newest first, across tenants unless `tenant_id` is given."""
        return await handlers.admin_list_sessions(pool=pool, tenant_id=tenant_id, status=status, limit=limit)

    @app.post("/v1/admin/sessions/{session_id}/end", response_model=AdminSessionOut,
              responses=error_responses(404, 409), dependencies=[Depends(admin)], tags=["admin"])
    async def admin_end_session(session_id: UUID):
        """End any tenant's session now (end reason `canceled`); ending an ended session returns it as is."""
        return await handlers.end_session(pool=pool, tenant_id=None, session_id=session_id,
                                          plans_file=settings.plans_file, ended=relays.end, reason="canceled")

    # The body comes from a dependency after `tenant`: a request without a valid key is refused
    # before its body is read (FastAPI reads a declared body before any dependency runs).
    @app.post("/v1/sessions", status_code=201, response_model=SessionCreated,
              responses=error_responses(402, 403, 409, 413, 503), tags=["sessions"],
              openapi_extra=http.json_body_openapi(app, handlers.CreateSession, required=False))
    async def create_session(tenant_id: UUID = Depends(tenant),
                             body: handlers.CreateSession | None = Depends(
                                 http.json_body(handlers.CreateSession, required=False)),
                             idempotency_key: str | None = Header(None, min_length=1, max_length=255)):
        return await handlers.create_session(
            body or handlers.CreateSession(), pool=pool, lease=lease, tenant_id=tenant_id,
            idempotency_key=idempotency_key, public_url=settings.public_url,
            defaults=(settings.default_timeout_s, settings.default_idle_timeout_s),
            lease_timeout_s=settings.lease_timeout_s)

    @app.get("/v1/sessions", response_model=SessionPage, responses=error_responses(), tags=["sessions"])
    async def list_sessions(tenant_id: UUID = Depends(tenant),
                            status: Literal["starting", "running", "completed", "failed"] | None = None,
                            limit: int = Query(50, ge=1, le=200), cursor: str | None = Query(None, max_length=200)):
        return await handlers.list_sessions(pool=pool, tenant_id=tenant_id, status=status, limit=limit,
                                            cursor=cursor)

    @app.get("/v1/sessions/{session_id}", response_model=SessionOut, responses=error_responses(404), tags=["sessions"])
    async def get_session(session_id: UUID, tenant_id: UUID = Depends(tenant)):
        return await handlers.get_session(pool=pool, tenant_id=tenant_id, session_id=session_id)

    @app.post("/v1/sessions/{session_id}/end", response_model=SessionOut, responses=error_responses(404, 409),
              tags=["sessions"])
    async def end_session(session_id: UUID, tenant_id: UUID = Depends(tenant)):
        return await handlers.end_session(pool=pool, tenant_id=tenant_id, session_id=session_id,
                                          plans_file=settings.plans_file, ended=relays.end)

    @app.get("/v1/sessions/{session_id}/screenshot", response_class=Response, tags=["sessions"],
             responses={200: {"content": {"image/png": {}}}, **error_responses(404, 409, 503, 504)})
    async def screenshot(session_id: UUID, tenant_id: UUID = Depends(tenant)):
        ws_url = await handlers.browser_url(pool=pool, tenant_id=tenant_id, session_id=session_id)
        try:
            png = await cdp.screenshot(ws_url, timeout_s=settings.cdp_call_timeout_s,
                                       max_size=settings.max_cdp_message_bytes)
        except cdp.NoPage:
            raise APIError(409, "no_page", "the session has no open page") from None
        except TimeoutError:
            raise APIError(504, "browser_timeout", "the browser did not answer in time") from None
        except Exception:
            raise APIError(503, "unavailable", "the browser did not answer") from None
        return Response(png, media_type="image/png")

    @app.get("/v1/usage", response_model=Usage, responses=error_responses(), tags=["usage"])
    async def usage(tenant_id: UUID = Depends(tenant)):
        return await handlers.usage(pool=pool, tenant_id=tenant_id)

    relay_limits = gateway.Limits(max_message_bytes=settings.max_cdp_message_bytes,
                                  max_relays=settings.max_relays_per_session)

    @app.websocket("/v1/sessions/{session_id}/cdp")
    async def cdp_relay(ws: WebSocket, session_id: UUID, token: str | None = None):
        await gateway.serve(ws, session_id=session_id, token=token, pool=pool, relays=relays, limits=relay_limits)

    return app
