"""Public API, admin API keys, the CDP websocket and /v1/connect: parse, call a handler, shape the
answer. The handlers' domain errors become HTTP answers here, and only here (`STATUS`)."""
import logging
from typing import Literal
from uuid import UUID

from fastapi import Depends, FastAPI, Header, Query, Request, WebSocket
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from services.sessions import api_keys as keys, downloads_http, ending, gateway, profiles_http, views
from services.sessions.create import CreateSession, create_session as create_handler
from services.sessions.domain import NotFound, Refused
from services.sessions.ports import UnitOfWork
from services.sessions.relays import Limits, Relays
from services.sessions.reservations import Reservations
from services.sessions.schemas import (AdminSessionList, AdminSessionOut, SessionCreated, SessionOut, SessionPage,
                                       TenantList, TenantOut, Usage)
from services.sessions.adapters import cdp
from services.sessions.dashboard import routes as dashboard
from shared import http
from shared.http import APIError, error_response, error_responses

log = logging.getLogger(__name__)
CONNECT_OPTIONS = {"browser", "isolation", "timeout_s", "idle_timeout_s", "profile", "persist"}
# The HTTP status of each refusal the handlers raise (domain.Refused's code).
STATUS = {"unauthorized": 401, "insufficient_credits": 402, "subscription_inactive": 403, "conflict": 409,
          "idempotency_conflict": 409, "api_key_limit": 409, "profile_in_use": 409, "invalid_request": 422,
          "concurrency_limit": 429, "no_capacity": 503, "profiles_unavailable": 503, "unavailable": 503}


def domain_error_response(exc: Exception):
    """The JSON error answer of a handler's exception; None for one that is not the domain's (a 500)."""
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, Refused):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return error_response(STATUS[exc.code], exc.code, exc.message, headers)
    if isinstance(exc, APIError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    return None


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
direction closes its socket with 1009; the session goes on and the URL connects again.

**Isolation**: `"browser"` (default) gives the session a browser process of its own;
`"context"` a fresh BrowserContext in a warm browser that serves only the tenant. Over the
relay, a context session's client sees its context as the browser's default (and only) one;
`Browser.close` ends that session, not the browser.

**One-line connect**: `WS /v1/connect?api_key=…&isolation=…&timeout_s=…&idle_timeout_s=…` (the key
may come as `Authorization: Bearer` instead; an `Idempotency-Key` header is honoured) creates a
session with those options exactly as `POST /v1/sessions` does (one credit, the same limits) and
relays to it: `connect_over_cdp("ws://host/v1/connect?api_key=…")`. Closing the socket ends the
session (end reason `client`). A refused create refuses the handshake with its HTTP status and
JSON error (401, 402, 403, 422, 429 with `Retry-After`, 503). `api_key` is never logged.
`&profile=<id>&persist=true` is the body's `"profile"`.

**Profiles**: browser state (cookies, local storage, IndexedDB; in browser isolation the rest of
the user-data directory) that outlives a session, stored encrypted. A session created with
`"profile": {"id"}` starts with it; with `"persist": true` its state is saved back as a new
version when it ends, whatever the end reason (a crashed browser saves nothing). The session's
`profile.save` says what happened (`pending` until then). A second persisting create of a profile
while one runs → 409 `profile_in_use` (read-only uses run beside it); a profile of another tenant,
or none, → 404 `not_found`; both refund the credit."""


def create_app(*, ready, uow: UnitOfWork, settings, lease, api_keys: keys.ApiKeys, relays: Relays,
               profiles=None, downloads=None, reservations: Reservations | None = None) -> FastAPI:
    app = FastAPI(title="browserfleet sessions", version="1", description=DESCRIPTION)
    http.install(app, ready=ready, settings=settings)
    bearer = HTTPBearer(auto_error=False)

    @app.exception_handler(NotFound)
    @app.exception_handler(Refused)
    async def _domain_error(_: Request, exc: Exception):
        return domain_error_response(exc)

    api_keys = dashboard.auth(api_keys, settings)  # API keys, plus dashboard-link sign-ins
    app.include_router(dashboard.router(uow=uow, settings=settings, auth=api_keys))

    async def tenant(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> UUID:
        return await api_keys.tenant_for(creds.credentials if creds else None)

    def admin(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        http.require_admin(request, settings.admin_token.get_secret_value())

    @app.post("/v1/admin/tenants/{tenant_id}/api-keys", status_code=201, response_model=dashboard.ApiKeyCreated,
              responses=error_responses(404, 409), dependencies=[Depends(admin)], tags=["admin"])
    async def create_api_key(tenant_id: UUID):
        return await keys.create_api_key(uow=uow, tenant_id=tenant_id, max_live=settings.max_api_keys_per_tenant)

    @app.delete("/v1/admin/api-keys/{key_id}", status_code=204, responses=error_responses(404),
                dependencies=[Depends(admin)], tags=["admin"])
    async def revoke_api_key(key_id: UUID):
        await api_keys.revoke(key_id)
        return Response(status_code=204)

    @app.get("/v1/admin/tenants", response_model=TenantList, responses=error_responses(),
             dependencies=[Depends(admin)], tags=["admin"])
    async def admin_tenants(limit: int = Query(200, ge=1, le=1000)):
        return await views.admin_list_tenants(uow=uow, limit=limit)

    @app.get("/v1/admin/tenants/{tenant_id}", response_model=TenantOut, responses=error_responses(404),
             dependencies=[Depends(admin)], tags=["admin"])
    async def admin_tenant(tenant_id: UUID):
        return await views.admin_tenant(uow=uow, tenant_id=tenant_id)

    @app.get("/v1/admin/sessions", response_model=AdminSessionList, responses=error_responses(),
             dependencies=[Depends(admin)], tags=["admin"])
    async def admin_sessions(tenant_id: UUID | None = None,
                             status: Literal["starting", "running", "completed", "failed"] | None = None,
                             limit: int = Query(50, ge=1, le=1000)):
        """Newest first, across tenants unless `tenant_id` is given."""
        return await views.admin_list_sessions(uow=uow, tenant_id=tenant_id, status=status, limit=limit)

    @app.post("/v1/admin/sessions/{session_id}/end", response_model=AdminSessionOut,
              responses=error_responses(404, 409), dependencies=[Depends(admin)], tags=["admin"])
    async def admin_end_session(session_id: UUID):
        """End any tenant's session now (end reason `canceled`); ending an ended session returns it as is."""
        return await ending.end_session(uow=uow, tenant_id=None, session_id=session_id,
                                          plans_file=settings.plans_file, ended=relays.end, reason="canceled")

    async def create(body: CreateSession, tenant_id: UUID, idempotency_key: str | None) -> dict:
        return await create_handler(
            body, uow=uow, lease=lease, tenant_id=tenant_id, idempotency_key=idempotency_key,
            public_url=settings.public_url, defaults=(settings.default_timeout_s, settings.default_idle_timeout_s),
            lease_timeout_s=settings.lease_timeout_s, reservations=reservations)

    # The body comes from a dependency after `tenant`: a request without a valid key is refused
    # before its body is read (FastAPI reads a declared body before any dependency runs).
    @app.post("/v1/sessions", status_code=201, response_model=SessionCreated,
              responses=error_responses(402, 403, 404, 409, 413, 503), tags=["sessions"],
              openapi_extra=http.json_body_openapi(app, CreateSession, required=False))
    async def create_session(tenant_id: UUID = Depends(tenant),
                             body: CreateSession | None = Depends(
                                 http.json_body(CreateSession, required=False)),
                             idempotency_key: str | None = Header(None, min_length=1, max_length=255)):
        return await create(body or CreateSession(), tenant_id, idempotency_key)

    @app.get("/v1/sessions", response_model=SessionPage, responses=error_responses(), tags=["sessions"])
    async def list_sessions(tenant_id: UUID = Depends(tenant),
                            status: Literal["starting", "running", "completed", "failed"] | None = None,
                            limit: int = Query(50, ge=1, le=200), cursor: str | None = Query(None, max_length=200)):
        return await views.list_sessions(uow=uow, tenant_id=tenant_id, status=status, limit=limit,
                                            cursor=cursor)

    @app.get("/v1/sessions/{session_id}", response_model=SessionOut, responses=error_responses(404), tags=["sessions"])
    async def get_session(session_id: UUID, tenant_id: UUID = Depends(tenant)):
        return await views.get_session(uow=uow, tenant_id=tenant_id, session_id=session_id)

    async def end_by_client(session_id: UUID) -> None:  # as POST /v1/sessions/{id}/end, from its relay
        await ending.end_session(uow=uow, tenant_id=None, session_id=session_id,
                                   plans_file=settings.plans_file, ended=relays.end)

    @app.post("/v1/sessions/{session_id}/end", response_model=SessionOut, responses=error_responses(404, 409),
              tags=["sessions"])
    async def end_session(session_id: UUID, tenant_id: UUID = Depends(tenant)):
        return await ending.end_session(uow=uow, tenant_id=tenant_id, session_id=session_id,
                                          plans_file=settings.plans_file, ended=relays.end)

    @app.get("/v1/sessions/{session_id}/screenshot", response_class=Response, tags=["sessions"],
             responses={200: {"content": {"image/png": {}}}, **error_responses(404, 409, 503, 504)})
    async def screenshot(session_id: UUID, tenant_id: UUID = Depends(tenant)):
        ws_url, context_id = await views.browser_url(uow=uow, tenant_id=tenant_id, session_id=session_id)
        try:
            png = await cdp.screenshot(ws_url, timeout_s=settings.cdp_call_timeout_s,
                                       max_size=settings.max_cdp_message_bytes, context_id=context_id)
        except cdp.NoPage:
            raise APIError(409, "no_page", "the session has no open page") from None
        except TimeoutError:
            raise APIError(504, "browser_timeout", "the browser did not answer in time") from None
        except Exception:
            raise APIError(503, "unavailable", "the browser did not answer") from None
        return Response(png, media_type="image/png")

    app.include_router(profiles_http.router(app=app, profiles=profiles or profiles_http.unavailable, tenant=tenant))
    app.include_router(downloads_http.router(uow=uow, downloads=downloads or downloads_http.unavailable,
                                             tenant=tenant))

    @app.get("/v1/usage", response_model=Usage, responses=error_responses(), tags=["usage"])
    async def usage(tenant_id: UUID = Depends(tenant)):
        return await views.usage(uow=uow, tenant_id=tenant_id)

    relay_limits = Limits(max_message_bytes=settings.max_cdp_message_bytes,
                                  max_relays=settings.max_relays_per_session)

    @app.websocket("/v1/sessions/{session_id}/cdp")
    async def cdp_relay(ws: WebSocket, session_id: UUID, token: str | None = None):
        await gateway.serve(ws, session_id=session_id, token=token, uow=uow, relays=relays, limits=relay_limits,
                            end_session=end_by_client)

    @app.websocket("/v1/connect")
    async def connect(ws: WebSocket):
        try:
            created = await _connect_create(ws)
        except (APIError, NotFound, Refused) as exc:
            await ws.send_denial_response(domain_error_response(exc))
            return
        except Exception as exc:  # a dependency down: the handshake still gets the JSON error
            log.warning("connect failed", extra={"error": type(exc).__name__})
            await ws.send_denial_response(error_response(503, "unavailable",
                                                         "a dependency is unavailable, retry later"))
            return
        session_id = UUID(created["id"])
        try:
            await gateway.serve_created(ws, session_id=session_id, uow=uow, relays=relays, limits=relay_limits,
                                        end_session=end_by_client)
        finally:  # closing the websocket ends the session
            try:
                await end_by_client(session_id)
            except Exception as exc:
                log.warning("ending a connect session failed", extra={"session_id": str(session_id),
                                                                      "error": type(exc).__name__})

    async def _connect_create(ws: WebSocket) -> dict:
        """POST /v1/sessions from the handshake: the key first (a bad one is a 401 whatever the options)."""
        query = dict(ws.query_params)
        key = query.pop("api_key", None) or http.bearer_token(ws)
        tenant_id = await api_keys.tenant_for(key)
        unknown = sorted(set(query) - CONNECT_OPTIONS)
        if unknown:
            raise Refused("invalid_request", f"unknown option(s): {', '.join(unknown)[:200]}")
        if "persist" in query and "profile" not in query:
            raise Refused("invalid_request", "persist needs a profile")
        if "profile" in query:  # ?profile=<id>&persist=true is the body's {"profile": {"id", "persist"}}
            query["profile"] = {"id": query.pop("profile"), "persist": query.pop("persist", False)}
        try:
            body = CreateSession.model_validate(query)
        except ValidationError as exc:
            raise Refused("invalid_request", "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])) from None
        idempotency_key = ws.headers.get("idempotency-key")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
            raise Refused("invalid_request", "Idempotency-Key must be 1 to 255 characters")
        return await create(body, tenant_id, idempotency_key)

    return app
