"""/dashboard pages (static HTML shells filled by app.js) and the API routes they need."""
import html
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from services.sessions import api_keys
from services.sessions.dashboard import domain, handlers, sign_ins
from shared import http
from shared.http import error_responses
from shared.money import Money

HERE = Path(__file__).parent
PAGES = {"usage": "Usage", "sessions": "Sessions", "profiles": "Profiles", "keys": "API keys",
         "quickstart": "Quick start"}
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
SNIPPETS = ("curl.txt", "playwright-python.txt", "playwright-node.txt", "puppeteer.txt")
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
                               "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "referrer-policy": "no-referrer", "x-content-type-options": "nosniff", "cache-control": "no-store",
}


class Day(BaseModel):
    date: str
    sessions: int
    minutes: float


class DailyUsage(BaseModel):
    period_start: datetime | None
    period_end: datetime | None
    bill_estimate: Money = Field(description="cost of this period's completed sessions (USD)")
    days: list[Day]


class ApiKeyOut(BaseModel):
    id: UUID
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    current: bool = Field(description="the key this request was made with")


class ApiKeyList(BaseModel):
    data: list[ApiKeyOut]


class ApiKeyCreated(BaseModel):
    id: UUID
    api_key: str


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_s: int = Field(domain.LINK_TTL_S, ge=60, le=24 * 3600)


class Link(BaseModel):
    url: str
    expires_at: datetime


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    link: str = Field(min_length=1, max_length=512)


class SignedIn(BaseModel):
    credential: str
    expires_at: datetime


class SignInOut(BaseModel):
    id: UUID
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    current: bool = Field(False, description="the sign-in this request was made with")


class SignInList(BaseModel):
    data: list[SignInOut]


def auth(keys: api_keys.ApiKeys, settings=None) -> sign_ins.DashboardAuth:
    """API-key auth that also accepts dashboard sign-ins; use it for every customer route."""
    return sign_ins.DashboardAuth(keys)


@lru_cache(maxsize=32)
def _template(name: str) -> str:
    return (HERE / "templates" / name).read_text()


def render(page: str, public_url: str) -> str:
    """A page: the layout around the page's template, with the public URL and snippets filled in."""
    fills = {"public_url": html.escape(public_url.rstrip("/")), "page": page,
             "title": PAGES.get(page, "Sign in")}
    for name in SNIPPETS:
        fills[f"snippet:{name}"] = html.escape(_template(f"snippets/{name}").replace("{{public_url}}",
                                                                                      public_url.rstrip("/")))
    text = _template("layout.html").replace("{{content}}", _template(f"{page}.html"))
    for key, value in fills.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def router(*, uow, settings, auth: sign_ins.DashboardAuth) -> APIRouter:
    api = APIRouter()
    bearer = HTTPBearer(auto_error=False)

    async def credential(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str | None:
        return creds.credentials if creds else None

    async def tenant(token: str | None = Depends(credential)) -> UUID:
        return await auth.tenant_for(token)

    def admin(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        http.require_admin(request, settings.admin_token.get_secret_value())

    def page(name: str) -> HTMLResponse:
        return HTMLResponse(render(name, settings.public_url), headers=SECURITY_HEADERS)

    @api.get("/dashboard", include_in_schema=False)
    async def dashboard_root():
        return RedirectResponse("/dashboard/", status_code=307)

    @api.get("/dashboard/", include_in_schema=False)
    async def sign_in_page():
        return page("signin")

    def page_route(name: str):
        async def show() -> HTMLResponse:
            return page(name)
        return show

    for name in PAGES:
        api.add_api_route(f"/dashboard/{name}", page_route(name), methods=["GET"], include_in_schema=False)

    @api.get("/dashboard/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:
            return Response(status_code=404)
        return FileResponse(HERE / "static" / name, media_type=STATIC[name],
                            headers={"cache-control": "no-cache", "x-content-type-options": "nosniff"})

    @api.get("/v1/usage/daily", response_model=DailyUsage, responses=error_responses(), tags=["usage"])
    async def usage_daily(tenant_id: UUID = Depends(tenant)):
        """Sessions and minutes per UTC day this period, and the bill so far."""
        return await handlers.usage_daily(uow=uow, tenant_id=tenant_id)

    @api.get("/v1/api-keys", response_model=ApiKeyList, responses=error_responses(), tags=["api-keys"])
    async def list_api_keys(tenant_id: UUID = Depends(tenant), token: str | None = Depends(credential)):
        """This tenant's API keys, without their secrets."""
        return await handlers.list_api_keys(uow=uow, tenant_id=tenant_id, credential=token)

    @api.post("/v1/api-keys", status_code=201, response_model=ApiKeyCreated, responses=error_responses(409),
              tags=["api-keys"])
    async def create_api_key(tenant_id: UUID = Depends(tenant)):
        """A new key; its secret is in this answer only. At most `MAX_API_KEYS_PER_TENANT` (25) live
        keys per tenant: past that, 409 `api_key_limit`."""
        return await api_keys.create_api_key(uow=uow, tenant_id=tenant_id,
                                              max_live=settings.max_api_keys_per_tenant)

    @api.delete("/v1/api-keys/{key_id}", status_code=204, responses=error_responses(404), tags=["api-keys"])
    async def revoke_api_key(key_id: UUID, tenant_id: UUID = Depends(tenant)):
        await handlers.revoke_api_key(uow=uow, auth=auth, tenant_id=tenant_id, key_id=key_id)
        return Response(status_code=204)

    @api.post("/v1/admin/tenants/{tenant_id}/dashboard-links", status_code=201, response_model=Link,
              responses=error_responses(404), dependencies=[Depends(admin)], tags=["admin"])
    async def mint_dashboard_link(tenant_id: UUID, body: LinkRequest | None = None):
        """A dashboard sign-in link for this tenant: it works once, within `ttl_s` seconds (default 15 minutes)."""
        return await sign_ins.mint_link(uow=uow, tenant_id=tenant_id, public_url=settings.public_url,
                                        ttl_s=(body or LinkRequest()).ttl_s)

    @api.get("/v1/admin/tenants/{tenant_id}/sign-ins", response_model=SignInList, responses=error_responses(404),
             dependencies=[Depends(admin)], tags=["admin"])
    async def admin_list_sign_ins(tenant_id: UUID):
        """This tenant's live dashboard sign-ins."""
        return await sign_ins.admin_list(uow=uow, tenant_id=tenant_id)

    @api.delete("/v1/admin/tenants/{tenant_id}/sign-ins", status_code=204, responses=error_responses(),
                dependencies=[Depends(admin)], tags=["admin"])
    async def admin_end_sign_ins(tenant_id: UUID):
        """End every dashboard sign-in of this tenant, and void its unused links."""
        await sign_ins.end_all(uow=uow, tenant_id=tenant_id, reason="revoked")
        return Response(status_code=204)

    @api.post("/v1/dashboard/sign-ins", response_model=SignedIn, responses=error_responses(), tags=["dashboard"])
    async def sign_in(body: SignIn):
        """Exchange a dashboard link's token, once, for a sign-in credential (8 hours) used as a Bearer
        token. A used, expired or unknown link is a 401."""
        return await sign_ins.exchange_link(uow=uow, link=body.link)

    @api.get("/v1/dashboard/sign-ins", response_model=SignInList, responses=error_responses(), tags=["dashboard"])
    async def list_sign_ins(tenant_id: UUID = Depends(tenant), token: str | None = Depends(credential)):
        """This tenant's live dashboard sign-ins."""
        return await sign_ins.list_sign_ins(uow=uow, tenant_id=tenant_id, credential=token)

    @api.delete("/v1/dashboard/sign-ins/current", status_code=204, responses=error_responses(404),
                tags=["dashboard"])
    async def sign_out(tenant_id: UUID = Depends(tenant), token: str | None = Depends(credential)):
        """Sign out: end the sign-in this request is made with; it is a 401 from now on."""
        await sign_ins.sign_out(uow=uow, tenant_id=tenant_id, credential=token)
        return Response(status_code=204)

    @api.delete("/v1/dashboard/sign-ins/{sign_in_id}", status_code=204, responses=error_responses(404),
                tags=["dashboard"])
    async def revoke_sign_in(sign_in_id: UUID, tenant_id: UUID = Depends(tenant)):
        """End one of this tenant's sign-ins (another tenant's is a 404)."""
        await sign_ins.revoke_sign_in(uow=uow, tenant_id=tenant_id, sign_in_id=sign_in_id)
        return Response(status_code=204)

    return api
