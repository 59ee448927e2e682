"""The ledger and usage handlers against real Postgres: replays never apply twice, a session's cost
is the one sessions computed (Decimal), and the balance always equals the ledger's sum."""
import asyncio
import random
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from services.billing import handlers, views
from services.billing.uow import PostgresUnitOfWork
from shared import db
from shared.messages import SessionCompleted, SessionStarted
from shared.plans import load_plans
from shared.settings import DEFAULT_PLANS_FILE
from tests import stripe_fakes as fakes

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "billing" / "migrations"
PLANS = load_plans(DEFAULT_PLANS_FILE)
P0 = datetime(2026, 5, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
async def pool(database_url):
    await db.migrate(database_url, schema="billing", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(database_url, schema="billing", max_size=12)
    yield pool
    await pool.close()


@pytest.fixture
def uow(pool):
    return PostgresUnitOfWork(pool)


async def pay(uow, tenant, sub, start, *, plan="professional"):
    event = fakes.invoice_paid(tenant, plan, "cus_l", sub, start, start + timedelta(days=30))
    await handlers.store_stripe_event(event, uow=uow)
    outcome = await handlers.process_stripe_event(event["id"], uow=uow, plans=PLANS, max_backoff=1)
    assert outcome.done


def started(tenant, session_id, at=None):
    return SessionStarted(session_id=session_id, tenant_id=tenant, browser_id=uuid.uuid4(), warm=False,
                          started_at=at or datetime.now(timezone.utc))


def completed(tenant, session_id, duration_ms):
    now = datetime.now(timezone.utc)
    return SessionCompleted(session_id=session_id, tenant_id=tenant, started_at=now,
                            ended_at=now + timedelta(milliseconds=duration_ms), duration_ms=duration_ms,
                            end_reason="timeout", cost=PLANS["professional"].session_cost(duration_ms))


async def balance(pool, tenant):
    return await pool.fetchval("SELECT balance FROM accounts WHERE tenant_id = $1", tenant)


async def test_debit_is_keyed_by_session_so_replays_and_redeliveries_apply_once(pool, uow):
    tenant, session_id = uuid.uuid4(), uuid.uuid4()
    await pay(uow, tenant, f"sub_{tenant.hex[:8]}", P0)
    msg = started(tenant, session_id)
    same_session_new_message = started(tenant, session_id)
    await asyncio.gather(*(handlers.session_started(m, uow=uow) for m in [msg] * 5 + [same_session_new_message] * 5))
    assert await balance(pool, tenant) == 4999
    rows = await pool.fetch("SELECT kind, reference, amount FROM ledger WHERE tenant_id = $1 ORDER BY id", tenant)
    assert [tuple(r) for r in rows] == [("grant", rows[0]["reference"], 5000), ("debit", str(session_id), -1)]


async def test_usage_cost_is_the_cost_sessions_computed_and_is_recorded_once(pool, uow):
    tenant = uuid.uuid4()
    await pay(uow, tenant, f"sub_{tenant.hex[:8]}", P0)
    s1, s2 = uuid.uuid4(), uuid.uuid4()
    for event in (completed(tenant, s1, 4 * 60_000), completed(tenant, s2, 10 * 60_000 + 5)):
        await handlers.session_completed(event, uow=uow)
        await handlers.session_completed(event, uow=uow)
    rows = await pool.fetch("SELECT session_id, cost FROM usage WHERE tenant_id = $1", tenant)
    costs = {r["session_id"]: r["cost"] for r in rows}
    assert costs == {s1: Decimal("0.010000"), s2: Decimal("0.022000")}
    assert await pool.fetchval("SELECT count(*) FROM meter_reports WHERE tenant_id = $1", tenant) == 2


async def test_session_for_a_tenant_without_account_is_refused_for_retry(uow):
    with pytest.raises(LookupError):
        await handlers.session_started(started(uuid.uuid4(), uuid.uuid4()), uow=uow)


async def test_random_flows_keep_balance_equal_to_ledger_and_to_an_independent_count(pool, uow):
    """Credits per period minus distinct sessions started in it, whatever the replays."""
    rng = random.Random(7)
    tenant, sub = uuid.uuid4(), f"sub_{uuid.uuid4().hex[:8]}"
    period, started_in_period, sessions = 0, set(), []
    await pay(uow, tenant, sub, P0)
    for _ in range(300):
        action = rng.random()
        if action < 0.6 or not sessions:
            sid = uuid.uuid4()
            sessions.append(sid)
            started_in_period.add(sid)
            await handlers.session_started(started(tenant, sid, P0 + timedelta(days=30 * period, hours=1)), uow=uow)
        elif action < 0.8:
            # a redelivery of an earlier session's start (new message id, same session): no effect
            await handlers.session_started(started(tenant, rng.choice(sessions)), uow=uow)
        elif action < 0.97:
            await handlers.session_completed(completed(tenant, rng.choice(sessions), rng.randint(0, 900_000)),
                                             uow=uow)
        else:
            period += 1
            started_in_period = set()
            await pay(uow, tenant, sub, P0 + timedelta(days=30 * period))
            await pay(uow, tenant, sub, P0 + timedelta(days=30 * period))  # twice: granted once
    assert await balance(pool, tenant) == 5000 - len(started_in_period)
    check = await views.check_ledger(uow=uow)
    assert check["consistent"] and check["mismatches"] == []
    grants = await pool.fetchval("SELECT count(*) FROM ledger WHERE tenant_id = $1 AND kind = 'grant'", tenant)
    assert grants == period + 1


async def test_ledger_check_reports_a_tampered_balance(pool, uow):
    tenant = uuid.uuid4()
    await pay(uow, tenant, f"sub_{tenant.hex[:8]}", P0)
    await pool.execute("UPDATE accounts SET balance = balance + 1 WHERE tenant_id = $1", tenant)
    try:
        check = await views.check_ledger(uow=uow)
        assert not check["consistent"]
        assert check["mismatches"] == [{"tenant_id": str(tenant), "balance": 5001, "ledger_sum": 5000}]
    finally:
        await pool.execute("UPDATE accounts SET balance = balance - 1 WHERE tenant_id = $1", tenant)


async def test_session_started_before_a_renewal_but_delivered_after_it(pool, uow):
    tenant, sub = uuid.uuid4(), f"sub_{uuid.uuid4().hex[:8]}"
    await pay(uow, tenant, sub, P0)
    late = SessionStarted(session_id=uuid.uuid4(), tenant_id=tenant, browser_id=uuid.uuid4(), warm=True,
                          started_at=P0 + timedelta(days=29, hours=23))
    await pay(uow, tenant, sub, P0 + timedelta(days=30))
    await handlers.session_started(late, uow=uow)
    await handlers.session_started(started(tenant, late.session_id), uow=uow)  # redelivered: no effect
    assert await balance(pool, tenant) == 5000
    kinds = await pool.fetch("SELECT kind, amount FROM ledger WHERE tenant_id = $1 ORDER BY id", tenant)
    assert [tuple(k) for k in kinds] == [("grant", 5000), ("expire", -5000), ("grant", 5000), ("debit", -1),
                                         ("adjustment", 1)]
    assert (await views.check_ledger(uow=uow))["consistent"]
