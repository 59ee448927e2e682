"""Billing HTTP: Stripe webhooks, checkout sessions, operator views. Parse, call, shape."""
import json
from datetime import datetime
from collections.abc import Awaitable, Callable
from decimal import Decimal
from uuid import UUID

import asyncpg
import stripe
from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field

from services.billing import handlers, metrics, repository
from services.billing.adapters.credentials import Credentials
from services.billing.adapters.stripe import StripeAPI
from services.billing.domain import money
from services.billing.settings import BillingSettings
from services.billing.workers import StripeEventWorker
from shared import http
from shared.http import APIError, bearer_token, error_responses, require_admin
from shared.plans import Plan


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


def _iso(value):
    return value.isoformat() if value is not None else None


def create_app(*, settings: BillingSettings, pool: asyncpg.Pool, plans: dict[str, Plan],
               worker: StripeEventWorker, stripe_api: StripeAPI, credentials: Credentials,
               ready: Callable[[], Awaitable[dict[str, bool]]]) -> FastAPI:
    app = FastAPI(title="browserfleet billing", version="1")
    # The webhook's cap is its own (STRIPE_WEBHOOK_MAX_BYTES), enforced like every other body's: 413.
    http.install(app, ready=ready, settings=settings,
                 body_limits={"/webhooks/stripe": settings.stripe_webhook_max_bytes})
    admin_token = settings.admin_token.get_secret_value()

    @app.post("/webhooks/stripe")
    async def stripe_webhook(request: Request):
        body = await request.body()
        try:
            stripe.WebhookSignature.verify_header(
                body.decode("utf-8"), request.headers.get("stripe-signature"),
                settings.stripe_webhook_secret.get_secret_value(),
                tolerance=settings.stripe_webhook_tolerance_seconds)
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
        if await handlers.store_stripe_event(pool, payload=payload):
            metrics.WEBHOOKS.labels(payload["type"], "stored").inc()
            worker.submit(payload["id"])
        else:
            metrics.WEBHOOKS.labels(payload["type"], "duplicate").inc()
        return {"received": True}

    async def checkout_caller(request: Request) -> handlers.Caller:
        return await handlers.checkout_caller(credential=bearer_token(request), admin_token=admin_token,
                                              credentials=credentials)

    # The body comes from a dependency after the caller's: a bad credential is refused unread.
    @app.post("/v1/checkout-sessions", response_model=CheckoutOut, responses=error_responses(403, 413, 429, 503),
              openapi_extra=http.json_body_openapi(app, CheckoutRequest))
    async def create_checkout_session(caller: handlers.Caller = Depends(checkout_caller),
                                      body: CheckoutRequest = Depends(http.json_body(CheckoutRequest))):
        """A Stripe Checkout for a plan. Without credentials it always starts a new tenant; a plan change
        for an existing tenant needs `Authorization: Bearer` with that tenant's API key or dashboard
        sign-in (or the admin token)."""
        tenant_id = handlers.checkout_tenant(caller, requested=body.tenant_id)
        plan = plans.get(body.plan)
        if plan is None or not plan.stripe_price_id:
            raise APIError(422, "invalid_request", f"unknown plan {body.plan!r}")
        return await handlers.start_checkout(pool=pool, stripe_api=stripe_api, plan=plan, tenant_id=tenant_id,
                                             email=body.email, success_url=settings.checkout_success_url,
                                             cancel_url=settings.checkout_cancel_url)

    @app.get("/v1/admin/accounts/{tenant_id}")
    async def account(tenant_id: UUID, request: Request):
        require_admin(request, admin_token)
        async with pool.acquire() as conn:
            row = await repository.get_account(conn, tenant_id=tenant_id)
            if row is None:
                raise APIError(404, "not_found", "unknown tenant")
            # Replaced by a plan change: they bill at Stripe until an operator cancels them there.
            superseded = await repository.superseded_subscriptions(conn, tenant_id=tenant_id)
        return {"tenant_id": str(row["tenant_id"]), "plan": row["plan"], "status": row["status"],
                "balance": row["balance"], "period_start": _iso(row["period_start"]),
                "period_end": _iso(row["period_end"]), "stripe_customer_id": row["stripe_customer_id"],
                "subscription_id": row["subscription_id"], "superseded_subscriptions": superseded}

    @app.get("/v1/admin/accounts/{tenant_id}/ledger")
    async def ledger(tenant_id: UUID, request: Request, limit: int = Query(50, ge=1, le=500),
                     cursor: int | None = None):
        require_admin(request, admin_token)
        async with pool.acquire() as conn:
            if await repository.get_account(conn, tenant_id=tenant_id) is None:
                raise APIError(404, "not_found", "unknown tenant")
            rows = await repository.ledger_page(conn, tenant_id=tenant_id, limit=limit + 1, after_id=cursor)
        page = rows[:limit]
        return {"data": [{"id": r["id"], "kind": r["kind"], "reference": r["reference"], "amount": r["amount"],
                          "balance_after": r["balance_after"], "created_at": _iso(r["created_at"])} for r in page],
                "next_cursor": str(page[-1]["id"]) if len(rows) > limit else None}

    @app.get("/v1/admin/accounts/{tenant_id}/usage")
    async def usage(tenant_id: UUID, request: Request, since: str | None = None, until: str | None = None):
        require_admin(request, admin_token)
        async with pool.acquire() as conn:
            account = await repository.get_account(conn, tenant_id=tenant_id)
            if account is None:
                raise APIError(404, "not_found", "unknown tenant")
            rows = await repository.usage_for(conn, tenant_id=tenant_id, since=_when(since), until=_when(until))
        total = sum((r["cost"] for r in rows), Decimal("0"))
        return {"data": [{"session_id": str(r["session_id"]), "started_at": _iso(r["started_at"]),
                          "ended_at": _iso(r["ended_at"]), "duration_ms": r["duration_ms"],
                          "end_reason": r["end_reason"], "cost": money(r["cost"])} for r in rows],
                "sessions": len(rows), "total_cost": money(total)}

    @app.get("/v1/admin/stripe-events")
    async def pending_stripe_events(request: Request, limit: int = Query(100, ge=1, le=1000)):
        """Stored events not processed yet (waiting for their tenant, or failing), oldest first."""
        require_admin(request, admin_token)
        async with pool.acquire() as conn:
            rows = await repository.pending_events(conn, limit=limit)
        return {"data": [{"id": r["id"], "type": r["type"], "received_at": _iso(r["received_at"]),
                          "attempts": r["attempts"], "next_attempt_at": _iso(r["next_attempt_at"]),
                          "last_error": r["last_error"]} for r in rows]}

    @app.get("/v1/admin/stripe-events/refused", response_model=RefusedEventList, responses=error_responses())
    async def refused_stripe_events(request: Request, tenant_id: UUID | None = None,
                                    limit: int = Query(100, ge=1, le=1000)):
        """Events refused for tying a tenant to another Stripe customer than its own, newest first."""
        require_admin(request, admin_token)
        return await handlers.refused_events(pool, tenant_id=tenant_id, limit=limit)

    @app.get("/v1/admin/ledger-check")
    async def ledger_check(request: Request):
        require_admin(request, admin_token)
        return await handlers.check_ledger(pool)

    return app


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise APIError(422, "invalid_request", f"not an ISO 8601 time: {value!r}")
