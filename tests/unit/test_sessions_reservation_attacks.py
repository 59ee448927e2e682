"""Red team on context reservations (services/sessions/reservations.py, create._create_on_reserved),
on fakes of sessions' ports. The first four were ways it broke, found by the red team and closed
since: a reservation in a browser whose crash sessions already handled (sessions.crashed_leases),
one given back after its browser crashed, more held than CONTEXT_RESERVE through refused creates,
and one lost by the sweep at its deadline. The others pin defences that held when tried
(concurrent creates on one replica, refusals and replays around a committed reservation)."""
import asyncio
import uuid

import pytest

from services.sessions import handlers
from services.sessions.create import CreateSession
from services.sessions.domain import Refused
from services.sessions.reservations import Reservations
from shared.messages import BrowserCrashed, LeaseReleased, utcnow
from tests.fakes.sessions import FakeContextLease, FakeRepository, FakeUnitOfWork
from tests.unit.sessions_support import LIMITS, TTL_S, Clock, create_with as create, filled, one_reserved, tenant






class YieldingLease(FakeContextLease):
    """warm_pool's context lease taking a few turns of the loop, as a real round trip does."""

    async def __call__(self, *args, **kwargs):
        for _ in range(3):
            await asyncio.sleep(0)
        return await super().__call__(*args, **kwargs)


@pytest.fixture
def uow():
    return FakeUnitOfWork()


@pytest.fixture
def clock():
    return Clock()


# --- attacks that worked, now closed -------------------------------------------------------------------------

async def test_a_reservation_in_a_browser_whose_crash_was_already_handled_is_never_taken(uow, clock):
    lease = FakeContextLease()
    reservations = Reservations(lease, uow, per_tenant=1, ttl_s=TTL_S, clock=clock)
    tenant_id = await tenant(uow)
    reserved = await one_reserved(uow, lease, reservations, tenant_id)
    crashed = BrowserCrashed(browser_id=reserved.reply.browser_id, tenant_id=tenant_id,
                             session_id=reserved.session_id, detected_at=utcnow())
    # warm_pool reported the host gone (report_gone: one event per active context, this one too);
    # sessions' durable consumer handles it first, this replica's own crash queue has not yet.
    ended = []
    await handlers.browser_crashed(crashed, uow=uow, plans_file=None, ended=lambda s, r: ended.append(s))

    live = FakeContextLease()  # any lease from now on is in another, live host
    reservations.lease = live
    try:
        created = await create(uow, live, reservations, tenant_id)
    except Refused:
        return  # refused: nothing debited, nothing running in the dead browser
    finally:
        reservations.drop_browser(crashed.browser_id)  # this replica's delivery, too late

    row = uow.sessions[uuid.UUID(created["id"])]
    on_dead_browser = row["status"] == "running" and row["browser_id"] == crashed.browser_id
    assert not on_dead_browser, "a running session, debited, in a browser already reported crashed"


async def test_a_reservation_given_back_after_its_browser_crashed_is_never_taken(uow, clock, monkeypatch):
    lease = FakeContextLease()
    reservations = Reservations(lease, uow, per_tenant=1, ttl_s=TTL_S, clock=clock)
    tenant_id = await tenant(uow)
    await create(uow, lease, reservations, tenant_id, request=CreateSession(isolation="context", timeout_s=60),
                 key="used")
    await filled(reservations, tenant_id)
    [reserved] = reservations.held[tenant_id]

    real_get_tenant, gate, paused = FakeRepository.get_tenant, asyncio.Event(), asyncio.Event()

    async def get_tenant(self, *, tenant_id, for_update=False):
        if not paused.is_set():  # the refused create, in its transaction, behind other traffic
            paused.set()
            await gate.wait()
        return await real_get_tenant(self, tenant_id=tenant_id, for_update=for_update)
    monkeypatch.setattr(FakeRepository, "get_tenant", get_tenant)

    refused = asyncio.create_task(create(uow, lease, reservations, tenant_id, key="used"))
    await paused.wait()
    reservations.drop_browser(reserved.reply.browser_id)  # the host crashed, every replica told
    gate.set()
    with pytest.raises(Refused):
        await refused

    live = FakeContextLease()  # any lease from now on is in another, live host
    reservations.lease = live
    try:
        created = await create(uow, live, reservations, tenant_id)
    except Refused:
        return
    row = uow.sessions[uuid.UUID(created["id"])]
    assert not (row["status"] == "running" and row["browser_id"] == reserved.reply.browser_id), \
        "a running session, debited, in a browser every replica was told had crashed"


async def test_a_tenant_never_holds_more_reservations_than_context_reserve(uow, clock, monkeypatch):
    lease = YieldingLease()
    reservations = Reservations(lease, uow, per_tenant=1, ttl_s=TTL_S, clock=clock)
    tenant_id = await tenant(uow, credits=20, limits=LIMITS.model_copy(update={"max_concurrent_sessions": 10}))
    await create(uow, lease, reservations, tenant_id)
    await create(uow, lease, reservations, tenant_id, request=CreateSession(isolation="context", timeout_s=60),
                 key="used")  # the key the refused creates reuse with another body
    await filled(reservations, tenant_id)

    real_get_tenant = FakeRepository.get_tenant
    hold = {"n": 0, "gate": asyncio.Event(), "paused": 0}

    async def get_tenant(self, *, tenant_id, for_update=False):
        if hold["n"] > 0:  # the refused creates wait on the tenant's row behind other traffic
            hold["n"] -= 1
            hold["paused"] += 1
            await hold["gate"].wait()
        return await real_get_tenant(self, tenant_id=tenant_id, for_update=for_update)
    monkeypatch.setattr(FakeRepository, "get_tenant", get_tenant)

    counts = []
    for _ in range(3):
        held = reservations.count(tenant_id)
        hold.update(n=held, gate=asyncio.Event(), paused=0)
        # as many creates as the tenant has reservations, each refused in the end, take them all
        refused = [asyncio.create_task(create(uow, lease, reservations, tenant_id, key="used")) for _ in range(held)]
        while hold["paused"] < held:
            await asyncio.sleep(0)
        assert reservations.count(tenant_id) == 0
        await create(uow, lease, reservations, tenant_id)  # succeeds on a lease of its own, and refills
        await filled(reservations, tenant_id)
        hold["gate"].set()
        for task in refused:
            with pytest.raises(Refused):
                await task
        counts.append(reservations.count(tenant_id))
    # before the fix: 2, 3, 4 (one more each round, for one credit a round)
    assert max(counts) <= reservations.per_tenant, f"{counts}: contexts leased ahead for one tenant on one replica"


async def test_a_reservation_swept_at_its_deadline_is_released(uow, clock):
    lease = FakeContextLease()
    reservations = Reservations(lease, uow, per_tenant=1, ttl_s=TTL_S, clock=clock)
    tenant_id = await tenant(uow)
    reserved = await one_reserved(uow, lease, reservations, tenant_id)

    ticks = iter([reserved.leased_at + TTL_S - 0.001])  # the first reading: still fresh; then past it

    def ticking() -> float:
        return next(ticks, reserved.leased_at + TTL_S + 0.001)
    reservations.clock = ticking
    await reservations.sweep()

    released = [e.session_id for e in uow.published(LeaseReleased)]
    assert reserved in reservations.held.get(tenant_id, []) or released == [reserved.session_id], \
        "the reservation vanished: neither held nor released"


# --- defences that held ------------------------------------------------------------------------

async def test_concurrent_creates_on_one_replica_never_share_a_context_nor_pass_the_limit(uow, clock):
    """Forty context creates at once, on reservations and leases of their own alike, against a
    limit of 5 and 12 credits: distinct contexts, one credit per session, never over the limit;
    the reservations left are fresh contexts none of them got."""
    lease = YieldingLease()
    reservations = Reservations(lease, uow, per_tenant=2, ttl_s=TTL_S, clock=clock)
    tenant_id = await tenant(uow, credits=12, limits=LIMITS.model_copy(update={"max_concurrent_sessions": 5}))
    await create(uow, lease, reservations, tenant_id)
    await filled(reservations, tenant_id)
    results = await asyncio.gather(*(create(uow, lease, reservations, tenant_id) for _ in range(40)),
                                   return_exceptions=True)
    await filled(reservations, tenant_id)
    created = [r for r in results if isinstance(r, dict)]
    assert all(isinstance(r, Refused) for r in results if not isinstance(r, dict))
    running = [s for s in uow.sessions.values() if s["status"] == "running"]
    assert len(running) == len(created) + 1 <= 5
    contexts = [s["context_id"] for s in running]
    held = [r.reply.context_id for r in reservations.held.get(tenant_id, [])]
    assert len(set(contexts + held)) == len(contexts) + len(held)
    assert uow.allowance(tenant_id)["credits_used"] == len(running)


async def test_a_replayed_create_never_gives_back_the_reservation_its_first_create_committed_on(uow, clock):
    """The first create with a key commits on a reservation; retries with that key, on this
    replica, replay it and give back only reservations of their own: the committed one is never
    held again, never released, and no later create gets its context."""
    lease = FakeContextLease()
    reservations = Reservations(lease, uow, per_tenant=1, ttl_s=TTL_S, clock=clock)
    tenant_id = await tenant(uow, credits=10, limits=LIMITS.model_copy(update={"max_concurrent_sessions": 3}))
    committed = await one_reserved(uow, lease, reservations, tenant_id)
    first = await create(uow, lease, reservations, tenant_id, key="k")
    assert first["id"] == str(committed.session_id)
    await filled(reservations, tenant_id)
    for _ in range(3):
        again = await create(uow, lease, reservations, tenant_id, key="k")
        assert again["id"] == first["id"]
    with pytest.raises(Refused):  # the same key, another body
        await create(uow, lease, reservations, tenant_id, request=CreateSession(isolation="context", timeout_s=5),
                     key="k")
    later = await create(uow, lease, reservations, tenant_id)
    clock.now += TTL_S
    await reservations.sweep()
    await reservations.close()
    assert all(r.session_id != committed.session_id for rs in reservations.held.values() for r in rs)
    assert committed.session_id not in {e.session_id for e in uow.published(LeaseReleased)}
    assert uow.sessions[uuid.UUID(later["id"])]["context_id"] != committed.reply.context_id
    assert uow.allowance(tenant_id)["credits_used"] == 3
