"""Billing as its own process against real Postgres and RabbitMQ: webhook → PaymentVerified on
the broker; session messages → debit, usage and a meter event at the Stripe stand-in; events
stored before a crash are processed after a restart."""
import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import aio_pika
import asyncpg
import httpx
import pytest

from shared.messages import SessionCompleted, SessionStarted
from tests import stripe_fakes as fakes
from tests.helpers import wait_for
from tests.integration.billing_process import ADMIN, SECRET, billing_process

EXCHANGE = "browserfleet.events"
P1 = datetime(2026, 3, 1, tzinfo=timezone.utc)
P2 = P1 + timedelta(days=31)


def deliver(url: str, event: dict) -> httpx.Response:
    body = json.dumps(event).encode()
    return httpx.post(f"{url}/webhooks/stripe", content=body,
                      headers={"Stripe-Signature": fakes.sign(body, SECRET), "Content-Type": "application/json"})


def admin(url, path):
    return httpx.get(f"{url}/v1/admin/accounts/{path}", headers=ADMIN)


async def _publish(mq_url, *events):
    conn = await aio_pika.connect_robust(mq_url)
    async with conn:
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        for event in events:
            await exchange.publish(aio_pika.Message(event.model_dump_json().encode(), message_id=str(event.message_id),
                                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                   routing_key=event.type, mandatory=True)


async def _bind_probe(mq_url, routing_key):
    conn = await aio_pika.connect_robust(mq_url)
    channel = await conn.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"probe.{uuid.uuid4().hex[:8]}", exclusive=True)
    await queue.bind(exchange, routing_key)
    return conn, queue


async def _next(queue, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await queue.get(fail=False)
        if msg:
            await msg.ack()
            return json.loads(msg.body)
        await asyncio.sleep(0.1)
    raise AssertionError("no message")


@pytest.fixture
def stripe_stand_in():
    with fakes.StripeStandIn() as s:
        yield s


async def test_payment_to_usage_through_the_broker(fresh_db, fresh_mq, artifacts_dir, stripe_stand_in):
    tenant, cus, sub = uuid.uuid4(), "cus_proc", "sub_proc"
    conn, probe = await _bind_probe(fresh_mq, "billing.payment_verified")
    svc = billing_process(fresh_db, fresh_mq, artifacts_dir, stripe_stand_in.url).start()
    try:
        await asyncio.to_thread(svc.wait_ready)
        assert deliver(svc.url, fakes.checkout_session_completed(tenant, "professional", cus, sub)).status_code == 200
        assert deliver(svc.url, fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2)).status_code == 200
        verified = await _next(probe)
        assert (verified["tenant_id"], verified["credits"], verified["plan"]) == (str(tenant), 5000, "professional")

        session_id = uuid.uuid4()
        now = datetime.now(timezone.utc)
        started = SessionStarted(session_id=session_id, tenant_id=tenant, browser_id=uuid.uuid4(), warm=True,
                                 started_at=now)
        completed = SessionCompleted(session_id=session_id, tenant_id=tenant, started_at=now,
                                     ended_at=now + timedelta(minutes=7), duration_ms=7 * 60_000 - 1,
                                     end_reason="client", cost="0.014")
        await _publish(fresh_mq, started, started, completed, completed)  # each delivered twice

        usage = await asyncio.to_thread(wait_for, lambda: (u := admin(svc.url, f"{tenant}/usage").json())["sessions"] and u,
                                        what="usage")
        # The cost is the message's (sessions computed it under the plan the session ran under), as Money.
        assert usage["total_cost"] == "0.014000" and usage["data"][0]["cost"] == "0.014000"
        assert usage["data"][0]["duration_ms"] == 7 * 60_000 - 1
        assert admin(svc.url, str(tenant)).json()["balance"] == 4999
        await asyncio.to_thread(wait_for, lambda: str(session_id) in stripe_stand_in.meter_events, what="meter event")
        meter = stripe_stand_in.meter_events[str(session_id)]
        assert meter["payload[stripe_customer_id]"] == cus and meter["payload[value]"] == "7"
        assert stripe_stand_in.meter_calls == 1
    finally:
        svc.stop()
        await conn.close()


async def test_meter_reports_wait_out_a_stripe_outage_and_events_survive_a_restart(
        fresh_db, fresh_mq, artifacts_dir, stripe_stand_in):
    tenant, cus, sub = uuid.uuid4(), "cus_out", "sub_out"
    stripe_stand_in.down = True
    svc = billing_process(fresh_db, fresh_mq, artifacts_dir, stripe_stand_in.url).start()
    try:
        await asyncio.to_thread(svc.wait_ready)
        deliver(svc.url, fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2))
        await asyncio.to_thread(wait_for, lambda: admin(svc.url, str(tenant)).status_code == 200, what="account")
        now = datetime.now(timezone.utc)
        sessions = [uuid.uuid4() for _ in range(5)]
        await _publish(fresh_mq, *[SessionCompleted(session_id=s, tenant_id=tenant, started_at=now, ended_at=now,
                                                    duration_ms=1000, end_reason="client", cost="0.01")
                                   for s in sessions])
        await asyncio.to_thread(wait_for, lambda: admin(svc.url, f"{tenant}/usage").json()["sessions"] == 5,
                                what="usage")
        db = await asyncpg.connect(fresh_db)
        try:
            await asyncio.to_thread(time.sleep, 1.0)  # a few failed attempts while Stripe is down
            tried = await db.fetchval("SELECT min(attempts) FROM billing.meter_reports WHERE sent_at IS NULL")
            assert tried >= 1 and stripe_stand_in.meter_events == {}
            svc.stop()
            # Stored before the crash, never processed: the next process must pick it up.
            later = fakes.invoice_paid(tenant, "professional", cus, sub, P2, P2 + timedelta(days=30))
            await db.execute("INSERT INTO billing.stripe_events (id, type, payload) VALUES ($1, $2, $3)",
                             later["id"], later["type"], json.dumps(later))
        finally:
            await db.close()
        stripe_stand_in.down = False
        svc = billing_process(fresh_db, fresh_mq, artifacts_dir, stripe_stand_in.url).start()
        await asyncio.to_thread(svc.wait_ready)
        await asyncio.to_thread(wait_for, lambda: len(stripe_stand_in.meter_events) == 5, what="meter events")
        assert set(stripe_stand_in.meter_events) == {str(s) for s in sessions}
        acct = await asyncio.to_thread(wait_for, lambda: (a := admin(svc.url, str(tenant)).json())["period_start"]
                                       == P2.isoformat() and a, what="renewal")
        assert acct["balance"] == 5000
        check = httpx.get(f"{svc.url}/v1/admin/ledger-check", headers=ADMIN).json()
        assert check == {"accounts": 1, "consistent": True, "mismatches": []}
    finally:
        svc.stop()


async def test_two_replicas_share_deliveries_and_grant_once(fresh_db, fresh_mq, artifacts_dir, stripe_stand_in):
    tenant, cus, sub = uuid.uuid4(), "cus_rep", "sub_rep"
    replicas = [billing_process(fresh_db, fresh_mq, artifacts_dir, stripe_stand_in.url).start() for _ in range(2)]
    try:
        for svc in replicas:
            await asyncio.to_thread(svc.wait_ready)
        events = [fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2,
                                     event_type=("invoice.paid", "invoice.payment_succeeded")[i % 2]) for i in range(10)]
        events.append(fakes.checkout_session_completed(tenant, "professional", cus, sub))
        async with httpx.AsyncClient() as client:
            async def send(i, event):
                body = json.dumps(event).encode()
                return await client.post(f"{replicas[i % 2].url}/webhooks/stripe", content=body,
                                         headers={"Stripe-Signature": fakes.sign(body, SECRET)})
            answers = await asyncio.gather(*(send(i, e) for i in range(3) for e in events))
        assert {r.status_code for r in answers} == {200}

        def settled():
            r = httpx.get(f"{replicas[0].url}/v1/admin/stripe-events", headers=ADMIN).json()["data"]
            return not r and admin(replicas[1].url, str(tenant)).status_code == 200
        await asyncio.to_thread(wait_for, settled, what="all events processed")
        ledger = admin(replicas[1].url, f"{tenant}/ledger").json()["data"]
        assert [(e["kind"], e["amount"]) for e in ledger] == [("grant", 5000)]
        assert admin(replicas[0].url, str(tenant)).json()["balance"] == 5000
        db = await asyncpg.connect(fresh_db)
        try:
            assert await db.fetchval("SELECT count(*) FROM billing.outbox"
                                     " WHERE routing_key = 'billing.payment_verified'") == 1
        finally:
            await db.close()
    finally:
        for svc in replicas:
            svc.stop()
