"""Synthetic Stripe webhook events (current API shape) and the real `Stripe-Signature` scheme.

    body = json.dumps(invoice_paid(tenant_id, "professional", "cus_1", "sub_1", start, end)).encode()
    httpx.post(url, content=body, headers={"Stripe-Signature": sign(body, "whsec_dev")})
"""
import hashlib
import hmac
import time
import uuid
from datetime import datetime

API_VERSION = "2025-08-27.basil"


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<payload>">`, as Stripe sends it."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _epoch(value: datetime | int | float) -> int:
    return int(value.timestamp()) if isinstance(value, datetime) else int(value)


def event(type: str, obj: dict, *, event_id: str | None = None, created: int | None = None) -> dict:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
        "data": {"object": obj},
    }


def _meta(tenant_id, plan) -> dict:
    return {"tenant_id": str(tenant_id), "plan": plan} if tenant_id is not None else {}


def checkout_session_completed(tenant_id, plan: str, customer: str, subscription: str, **kw) -> dict:
    return event("checkout.session.completed", {
        "id": f"cs_test_{uuid.uuid4().hex[:24]}", "object": "checkout.session", "mode": "subscription",
        "status": "complete", "payment_status": "paid", "client_reference_id": str(tenant_id),
        "customer": customer, "subscription": subscription, "metadata": _meta(tenant_id, plan),
    }, **kw)


def _invoice(tenant_id, plan, customer, subscription, period_start, period_end, *, status: str,
             price_id: str | None = None) -> dict:
    start, end = _epoch(period_start), _epoch(period_end)
    price = price_id or f"price_{plan}"
    return {
        "id": f"in_{uuid.uuid4().hex[:24]}", "object": "invoice", "status": status, "customer": customer,
        "billing_reason": "subscription_cycle", "currency": "usd", "amount_paid": 4900 if status == "paid" else 0,
        # The invoice's own period is the previous one for subscription invoices; lines carry the paid one.
        "period_start": start, "period_end": start,
        "parent": {"type": "subscription_details", "quote_details": None,
                   "subscription_details": {"subscription": subscription, "metadata": _meta(tenant_id, plan)}},
        "lines": {"object": "list", "has_more": False, "data": [{
            "id": f"il_{uuid.uuid4().hex[:24]}", "object": "line_item", "amount": 4900, "quantity": 1,
            "period": {"start": start, "end": end},
            "pricing": {"type": "price_details", "price_details": {"price": price, "product": f"prod_{plan}"}},
            "parent": {"type": "subscription_item_details",
                       "subscription_item_details": {"subscription": subscription}},
            "metadata": {},
        }]},
    }


def invoice_paid(tenant_id, plan: str, customer: str, subscription: str, period_start, period_end,
                 event_type: str = "invoice.paid", **kw) -> dict:
    return event(event_type, _invoice(tenant_id, plan, customer, subscription, period_start, period_end,
                                      status="paid"), **kw)


def invoice_payment_failed(tenant_id, plan: str, customer: str, subscription: str, period_start, period_end,
                           **kw) -> dict:
    return event("invoice.payment_failed", _invoice(tenant_id, plan, customer, subscription, period_start,
                                                    period_end, status="open"), **kw)


def _subscription(tenant_id, plan, customer, subscription, status, period_start, period_end) -> dict:
    item = {"id": f"si_{uuid.uuid4().hex[:14]}", "object": "subscription_item",
            "price": {"id": f"price_{plan}", "object": "price"}, "quantity": 1}
    if period_start is not None:
        item.update(current_period_start=_epoch(period_start), current_period_end=_epoch(period_end))
    return {"id": subscription, "object": "subscription", "customer": customer, "status": status,
            "metadata": _meta(tenant_id, plan), "items": {"object": "list", "data": [item]}}


def subscription_updated(tenant_id, plan: str, customer: str, subscription: str, status: str = "active",
                         period_start=None, period_end=None, **kw) -> dict:
    return event("customer.subscription.updated",
                 _subscription(tenant_id, plan, customer, subscription, status, period_start, period_end), **kw)


def subscription_created(tenant_id, plan: str, customer: str, subscription: str, status: str = "incomplete",
                         period_start=None, period_end=None, **kw) -> dict:
    """As Checkout creates it: incomplete until its first invoice is paid."""
    return event("customer.subscription.created",
                 _subscription(tenant_id, plan, customer, subscription, status, period_start, period_end), **kw)


def subscription_deleted(tenant_id, plan: str, customer: str, subscription: str, **kw) -> dict:
    return event("customer.subscription.deleted",
                 _subscription(tenant_id, plan, customer, subscription, "canceled", None, None), **kw)


def old_shape_invoice_paid(customer: str, subscription: str, period_start, period_end, *, tenant_id=None,
                           plan: str | None = None, event_type: str = "invoice.payment_succeeded", **kw) -> dict:
    """The pre-2025 shape (`invoice.subscription`), as test servers like localstripe send it."""
    start, end = _epoch(period_start), _epoch(period_end)
    return event(event_type, {
        "id": f"in_{uuid.uuid4().hex[:24]}", "object": "invoice", "status": "paid", "customer": customer,
        "subscription": subscription, "subscription_details": {"metadata": _meta(tenant_id, plan)},
        "period_start": start, "period_end": start,
        "lines": {"object": "list", "data": [{"id": f"il_{uuid.uuid4().hex[:12]}", "period": {"start": start, "end": end},
                                              "price": {"id": f"price_{plan}" if plan else "price_unknown"},
                                              "type": "subscription", "subscription": subscription}]},
    }, **kw)


def _form(body: bytes) -> dict:
    from urllib.parse import parse_qsl
    return dict(parse_qsl(body.decode()))


class StripeStandIn:
    """A tiny stateful stand-in for the parts of the Stripe API that billing calls and test
    servers lack (Checkout Sessions, Billing Meter events), served over real HTTP in a thread.

    `down = True` makes every call fail with 500, as an outage would. Meter events are deduped
    by `identifier`, as Stripe does; `meter_calls` counts every accepted request."""

    def __init__(self, port: int | None = None):
        import threading

        from tests.infra import free_port
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.down = False
        self.checkout_sessions: list[dict] = []
        self.meter_events: dict[str, dict] = {}
        self.meter_calls = 0
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    def _app(self):
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse

        app = FastAPI()

        def outage():
            return JSONResponse({"error": {"type": "api_error", "message": "stand-in is down"}}, status_code=500)

        @app.post("/v1/checkout/sessions")
        async def checkout(request: Request):
            if self.down:
                return outage()
            form = _form(await request.body())
            session_id = f"cs_test_{uuid.uuid4().hex[:24]}"
            with self._lock:
                self.checkout_sessions.append({"id": session_id, **form})
            return {"id": session_id, "object": "checkout.session", "mode": form.get("mode"),
                    "client_reference_id": form.get("client_reference_id"),
                    "url": f"https://checkout.stripe.test/c/pay/{session_id}"}

        @app.post("/v1/billing/meter_events")
        async def meter_event(request: Request):
            if self.down:
                return outage()
            form = _form(await request.body())
            with self._lock:
                self.meter_calls += 1
                self.meter_events.setdefault(form["identifier"], form)
            return {"object": "billing.meter_event", "event_name": form.get("event_name"),
                    "identifier": form["identifier"], "livemode": False, "created": int(time.time()),
                    "timestamp": int(form.get("timestamp") or time.time()),
                    "payload": {"stripe_customer_id": form.get("payload[stripe_customer_id]"),
                                "value": form.get("payload[value]")}}

        return app

    def start(self) -> "StripeStandIn":
        import threading

        import uvicorn
        self._server = uvicorn.Server(uvicorn.Config(self._app(), host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
