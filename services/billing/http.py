"""Billing HTTP: Stripe webhooks, checkout sessions, operator views. Parse, call, shape; the one
place where the handlers' domain errors (NotFound, Refused) become the JSON error shape."""
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from uuid import UUID

import stripe
from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field

from services.billing import checkout, handlers, metrics, views
from services.billing.domain import NotFound, Refused
from services.billing.ports import Credentials, StripeAPI, UnitOfWork
from services.billing.settings import BillingSettings
from services.billing.workers import StripeEventWorker
from shared import http
from shared.http import APIError, bearer_token, error_response, error_responses, require_admin
from shared.money import Money
from shared.plans import Plan

# Refused.code → HTTP status (the code itself is the error shape's `code`).
STATUS = {"unauthorized": 401, "forbidden": 403, "invalid_request": 422, "rate_limited": 429, "unavailable": 503}


class CheckoutRequest(BaseModel):
    plan: str
    email: str | None = None
    tenant_id: UUID | None = Field(None, description="an existing tenant (a plan change): needs that tenant's "
                                                     "API key or dashboard sign-in, or the admin token")


class CheckoutOut(BaseModel):
    url: str
    tenant_id: UUID


class RefusedEvent(BaseModel):
    event_id: str
    type: str
    tenant_id: UUID
    account_customer: str = Field(description="the Stripe customer the tenant is bound to")
    event_customer: str | None = Field(description="the Stripe customer the event would have tied it to")
    subscription_id: str | None
    reason: str
    refused_at: datetime


class RefusedEventList(BaseModel):
    data: list[RefusedEvent]


class UsageRow(BaseModel):
    session_id: UUID
    started_at: datetime
    ended_at: datetime
    duration_ms: int
    end_reason: str
    cost: Money


class UsageOut(BaseModel):
    data: list[UsageRow]
    sessions: int
    total_cost: Money


def create_app(*, settings: BillingSettings, uow: UnitOfWork, plans: dict[str, Plan],
               worker: StripeEventWorker, stripe_api: StripeAPI, credentials: Credentials,
               ready: Callable[[], Awaitable[dict[str, bool]]]) -> FastAPI:
    app = FastAPI(title="browserfleet billing", version="1")
    # The webhook's cap is its own (STRIPE_WEBHOOK_MAX_BYTES), enforced like every other body's: 413.
    http.install(app, ready=ready, settings=settings,
                 body_limits={"/webhooks/stripe": settings.stripe_webhook_max_bytes})
    admin_token = settings.admin_token.get_secret_value()

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound):
        return error_response(404, "not_found", str(exc))

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return error_response(STATUS.get(exc.code, 400), exc.code, exc.message, headers)

    @app.post("/webhooks/stripe")
    async def stripe_webhook(request: Request):
        body = await request.body()
        try:
            stripe.WebhookSignature.verify_header(
                body.decode("utf-8"), request.headers.get("stripe-signature"),
                settings.stripe_webhook_secret.get_secret_value(),
                tolerance=settings.stripe_webhook_tolerance_s)
        except (stripe.SignatureVerificationError, UnicodeDecodeError):
            metrics.WEBHOOKS.labels("unknown", "bad_signature").inc()
            raise APIError(400, "invalid_signature", "missing, invalid or stale Stripe-Signature")
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not (isinstance(payload, dict) and all(isinstance(payload.get(k), str) for k in ("id", "type"))):
            metrics.WEBHOOKS.labels("unknown", "invalid_payload").inc()
            raise APIError(400, "invalid_payload", "not a Stripe event")
        if await handlers.store_stripe_event(payload, uow=uow):
            worker.submit(payload["id"])
        return {"received": True}

    async def checkout_caller(request: Request) -> checkout.Caller:
        credential = bearer_token(request)
        if credential is not None and not checkout.is_admin(credential, admin_token):
            http.refuse_if_throttled()  # sessions' failed-auth limit, here too: no guessing through billing
        try:
            return await checkout.checkout_caller(credential=credential, admin_token=admin_token,
                                                  credentials=credentials)
        except Refused as exc:
            if exc.code == "unauthorized":
                http.auth_failed()
            raise

    # The body comes from a dependency after the caller's: a bad credential is refused unread.
    @app.post("/v1/checkout-sessions", response_model=CheckoutOut, responses=error_responses(403, 413, 429, 503),
              openapi_extra=http.json_body_openapi(app, CheckoutRequest))
    async def create_checkout_session(caller: checkout.Caller = Depends(checkout_caller),
                                      body: CheckoutRequest = Depends(http.json_body(CheckoutRequest))):
        """A Stripe Checkout for a plan. Without credentials it always starts a new tenant; a plan change
        for an existing tenant needs `Authorization: Bearer` with that tenant's API key or dashboard
        sign-in (or the admin token)."""
        tenant_id = checkout.checkout_tenant(caller, requested=body.tenant_id)
        return await checkout.start_checkout(uow=uow, stripe_api=stripe_api, plans=plans, plan_name=body.plan,
                                             tenant_id=tenant_id, email=body.email,
                                             success_url=settings.checkout_success_url,
                                             cancel_url=settings.checkout_cancel_url)

    @app.get("/v1/admin/accounts/{tenant_id}")
    async def account(tenant_id: UUID, request: Request):
        require_admin(request, admin_token)
        return await views.account(uow=uow, tenant_id=tenant_id)

    @app.get("/v1/admin/accounts/{tenant_id}/ledger")
    async def ledger(tenant_id: UUID, request: Request, limit: int = Query(50, ge=1, le=500),
                     cursor: int | None = None):
        require_admin(request, admin_token)
        return await views.ledger(uow=uow, tenant_id=tenant_id, limit=limit, cursor=cursor)

    @app.get("/v1/admin/accounts/{tenant_id}/usage", response_model=UsageOut, responses=error_responses(404))
    async def usage(tenant_id: UUID, request: Request, since: str | None = None, until: str | None = None):
        """The tenant's completed sessions and what each cost (money: decimal strings, 6 decimals)."""
        require_admin(request, admin_token)
        return await views.usage(uow=uow, tenant_id=tenant_id, since=_when(since), until=_when(until))

    @app.get("/v1/admin/stripe-events")
    async def pending_stripe_events(request: Request, limit: int = Query(100, ge=1, le=1000)):
        """Stored events not processed yet (waiting for their tenant, or failing), oldest first."""
        require_admin(request, admin_token)
        return await views.pending_stripe_events(uow=uow, limit=limit)

    @app.get("/v1/admin/stripe-events/refused", response_model=RefusedEventList, responses=error_responses())
    async def refused_stripe_events(request: Request, tenant_id: UUID | None = None,
                                    limit: int = Query(100, ge=1, le=1000)):
        """Events refused for tying a tenant to another Stripe customer than its own, newest first."""
        require_admin(request, admin_token)
        return await views.refused_events(uow=uow, tenant_id=tenant_id, limit=limit)

    @app.get("/v1/admin/ledger-check")
    async def ledger_check(request: Request):
        require_admin(request, admin_token)
        return await views.check_ledger(uow=uow)

    return app


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise APIError(422, "invalid_request", f"not an ISO 8601 time: {value!r}")
