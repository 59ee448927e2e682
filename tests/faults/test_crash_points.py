"""Scenario 1: kill -9 a service at each step of the payment flow and of the session flow, restart
it, and the flows complete with exactly one grant, one debit, one tenant and no leaked browser."""
import uuid

import httpx
import pytest

from tests.faults.harness import Customer, Db, audit, no_leaks
from tests.helpers import eventually

pytestmark = pytest.mark.faults

PAYMENT_POINTS = [  # armed from the start: the payment flow runs into them
    ("billing", "billing.after_commit:invoice.paid", "billing after committing the grant, before publishing"),
    ("billing", "outbox.before_publish", "billing's outbox relay before publishing payment.verified"),
    ("billing", "outbox.after_publish", "billing's outbox relay after publishing, before marking sent"),
    ("provisioner", "provisioner.after_apply", "provisioner after applying the tenant, before recording/acking"),
    ("provisioner", "outbox.after_publish", "provisioner's relay after publishing tenant.provisioned, before marking"),
]
SESSION_POINTS = [  # armed once the tenant is ready: creating a session runs into them
    ("sessions", "sessions.after_debit", "sessions after debiting, before leasing or answering"),
    ("sessions", "sessions.after_lease", "sessions after leasing a browser, before recording it"),
    ("sessions", "sessions.before_answer", "sessions after recording the session, before answering"),
    ("sessions", "outbox.before_publish", "sessions' relay before publishing session.started"),
    ("sessions", "outbox.after_publish", "sessions' relay after publishing session.started, before marking"),
    ("warm_pool", "warm_pool.after_lease", "warm_pool after leasing a browser, before replying"),
]


async def _send_tolerating_crash(customer: Customer, events: list[dict]) -> None:
    for event in events:
        try:
            await customer.webhook(event)
        except httpx.TransportError:
            pass  # the process died mid-request; Stripe retries undelivered webhooks


async def _one_session_end_to_end(customer: Customer, session: dict) -> None:
    """End a created session and see it billed once, with one debit, and both sides agreeing."""
    ended = await customer.end(session["id"])
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "completed"
    await eventually(lambda: _billed(customer, [session["id"]]), timeout=30, what="usage billed once")
    await eventually(customer.reconciled, timeout=30, what="billing balance == sessions remaining")
    usage = await customer.usage()
    assert usage["credits_used"] == 1 and usage["credits_remaining"] == 4999
    debits = [e for e in await customer.ledger() if e["kind"] == "debit"]
    assert [d["reference"] for d in debits] == [session["id"]]


async def _billed(customer: Customer, expected: list[str]) -> bool:
    return sorted(await customer.billed_sessions()) == sorted(expected)


async def _one_tenant(customer: Customer) -> None:
    grants = [e for e in await customer.ledger() if e["kind"] == "grant"]
    assert [g["amount"] for g in grants] == [5000]
    async with Db(customer.p.database_url) as db:
        announced = await db.count("SELECT count(*) FROM provisioner.outbox WHERE routing_key ="
                                   " 'provisioner.tenant_provisioned' AND body->>'tenant_id' = $1", customer.tenant_id)
        known = await db.count("SELECT count(*) FROM provisioner.tenants WHERE tenant_id = $1::text::uuid",
                               customer.tenant_id)
    assert (announced, known) == (1, 1)


@pytest.mark.parametrize("service,point,what", PAYMENT_POINTS, ids=[f"{s}-{p}" for s, p, _ in PAYMENT_POINTS])
async def test_crash_in_payment_flow(fault_platform, report, service, point, what):
    row = report(f"1. kill -9 in payment flow ({service})", f"SIGKILL at `{point}`: {what}; restart")
    platform = fault_platform(crash={service: point})
    async with httpx.AsyncClient(timeout=30) as http:
        customer = Customer(platform, http)
        events = [customer.checkout(), customer.invoice()]
        await _send_tolerating_crash(customer, events)
        assert await platform.crashed(service) == -9
        platform.restart(service, graceful=False)
        await _send_tolerating_crash(customer, events)  # Stripe's retries: duplicates change nothing
        await customer.ready()
        await _one_tenant(customer)
        created = await customer.create()
        assert created.status_code == 201, created.text
        await _one_session_end_to_end(customer, created.json())
        await no_leaks(platform)
        lost, doubled = await audit(platform)
    row.done("flow completed after restart: 1 grant, 1 tenant, 1 debit, 0 leaked browsers", lost, doubled)


@pytest.mark.parametrize("service,point,what", SESSION_POINTS, ids=[f"{s}-{p}" for s, p, _ in SESSION_POINTS])
async def test_crash_in_session_flow(fault_platform, report, service, point, what):
    row = report(f"1. kill -9 in session flow ({service})", f"SIGKILL at `{point}`: {what}; restart")
    platform = fault_platform()
    async with httpx.AsyncClient(timeout=30) as http:
        customer = Customer(platform, http)
        await customer.pay()
        await customer.ready()
        platform.restart(service, crash=point)
        await customer.ready()
        key = f"fault-{uuid.uuid4()}"
        try:
            first = await customer.create(key)
            # The crash of a dependency must surface as a clean, retryable error (never a 201 then nothing).
            assert first.status_code in (201, 503), first.text
        except httpx.TransportError:
            pass  # the sessions process itself died mid-request
        assert await platform.crashed(service) == -9
        platform.restart(service, graceful=False)
        session = await customer.create_until_created(key)
        assert session["status"] == "running"
        again = await customer.create(key)  # the same key: the same session, never a second charge
        assert again.status_code == 201 and again.json()["id"] == session["id"]
        await eventually(lambda: customer.remaining_is(4999), timeout=60, what="exactly one credit used")
        await _one_session_end_to_end(customer, session)
        await no_leaks(platform)
        lost, doubled = await audit(platform)
    row.done("retry with the same Idempotency-Key got one session: 1 debit, 0 leaked browsers", lost, doubled)
