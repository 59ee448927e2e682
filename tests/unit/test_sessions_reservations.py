"""Context leases held ready (services/sessions/reservations.py) through the create handler, on
fakes of its ports: a context create takes one without a lease round trip, a refused create gives
it back untouched, they never cross tenants, never outlive their deadline, and never serve a
browser that crashed."""
import asyncio
import uuid

import pytest

from services.sessions.create import CreateSession, ProfileOption
from services.sessions.domain import Refused
from services.sessions.reservations import Reservations
from shared.messages import LeaseReleased, LeaseReply, SessionStarted
from tests.fakes.sessions import FakeContextLease, FakeUnitOfWork
from tests.unit.sessions_support import LIMITS, TTL_S, Clock, create_with as create, filled, one_reserved, tenant




@pytest.fixture
def uow():
    return FakeUnitOfWork()


@pytest.fixture
def lease():
    return FakeContextLease()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def reservations(uow, lease, clock):
    return Reservations(lease, uow, per_tenant=1, ttl_s=TTL_S, clock=clock)




async def test_the_next_context_create_takes_a_reserved_context_with_no_lease_on_its_path(uow, lease, reservations):
    tenant_id = await tenant(uow)
    first = await create(uow, lease, reservations, tenant_id)
    await filled(reservations, tenant_id)
    [reserved] = reservations.held[tenant_id]
    asked = len(lease.asked)

    second = await create(uow, lease, reservations, tenant_id)
    assert len(lease.asked) == asked  # no round trip before the answer
    assert [a["ahead"] for a in lease.asked] == [False, True]  # the first create's own lease, then ahead
    assert second["id"] == str(reserved.session_id) and second["status"] == "running"
    row = uow.sessions[reserved.session_id]
    assert row["context_id"] == reserved.reply.context_id != uow.sessions[uuid.UUID(first["id"])]["context_id"]
    assert uow.allowance(tenant_id)["credits_used"] == 2
    assert [e.session_id for e in uow.published(SessionStarted)][-1] == reserved.session_id
    await filled(reservations, tenant_id)
    assert reservations.count(tenant_id) == 1  # and another one is ready for the create after


async def test_a_refused_create_gives_the_reservation_back_and_debits_nothing(uow, lease, reservations):
    tenant_id = await tenant(uow, credits=1)
    kept = await one_reserved(uow, lease, reservations, tenant_id)
    with pytest.raises(Refused) as refused:
        await create(uow, lease, reservations, tenant_id)
    assert refused.value.code == "insufficient_credits"
    assert reservations.held[tenant_id] == [kept] and kept.session_id not in uow.sessions
    assert uow.allowance(tenant_id)["credits_used"] == 1


async def test_a_tenants_reservation_never_serves_another_tenant(uow, lease, reservations):
    a, b = await tenant(uow), await tenant(uow)
    reserved = await one_reserved(uow, lease, reservations, a)
    created = await create(uow, lease, reservations, b)
    assert created["id"] != str(reserved.session_id) and reservations.held[a] == [reserved]
    assert lease.asked[-1]["tenant_id"] == b


async def test_browser_sessions_and_profile_sessions_lease_as_before(uow, lease, reservations):
    tenant_id = await tenant(uow, limits=LIMITS.model_copy(update={"max_concurrent_sessions": 3}))
    reserved = await one_reserved(uow, lease, reservations, tenant_id)
    for request in (CreateSession(), CreateSession(isolation="context", profile=ProfileOption(id=uuid.uuid4()))):
        created = await create(uow, lease, reservations, tenant_id, request=request)
        assert created["id"] == str(lease.asked[-1]["session_id"]) != str(reserved.session_id)
    assert reservations.held[tenant_id] == [reserved]


async def test_a_reservation_past_its_deadline_is_never_taken_and_is_released(uow, lease, reservations, clock):
    tenant_id = await tenant(uow)
    stale = await one_reserved(uow, lease, reservations, tenant_id)
    clock.now += TTL_S
    created = await create(uow, lease, reservations, tenant_id)
    assert created["id"] != str(stale.session_id)
    await asyncio.sleep(0)  # the release runs beside the create
    await asyncio.sleep(0)
    assert [e.session_id for e in uow.published(LeaseReleased)] == [stale.session_id]

    await filled(reservations, tenant_id)
    [fresh] = reservations.held[tenant_id]
    clock.now += TTL_S
    await reservations.sweep()
    assert [e.session_id for e in uow.published(LeaseReleased)] == [stale.session_id, fresh.session_id]
    assert tenant_id not in reservations.held


async def test_an_idempotent_retry_replays_and_keeps_the_reservation(uow, lease, reservations):
    tenant_id = await tenant(uow)
    await create(uow, lease, reservations, tenant_id)
    await filled(reservations, tenant_id)
    first = await create(uow, lease, reservations, tenant_id, key="k")
    await filled(reservations, tenant_id)
    [kept] = reservations.held[tenant_id]
    again = await create(uow, lease, reservations, tenant_id, key="k")
    assert again["id"] == first["id"] and again["cdp_url"] == first["cdp_url"]
    assert reservations.held[tenant_id] == [kept] and uow.allowance(tenant_id)["credits_used"] == 2


async def test_a_crashed_browsers_reservations_are_dropped_and_shutdown_releases_the_rest(uow, reservations):
    a, b = await tenant(uow), await tenant(uow)
    await create(uow, FakeContextLease(), reservations, a)
    await filled(reservations, a)
    crashed = reservations.held[a][0].reply.browser_id
    reservations.lease = FakeContextLease()  # b's in another browser
    await create(uow, reservations.lease, reservations, b)
    await filled(reservations, b)
    reservations.drop_browser(crashed)
    assert reservations.take(a) is None
    [b_reserved] = reservations.held[b]
    await reservations.close()
    assert [e.session_id for e in uow.published(LeaseReleased)] == [b_reserved.session_id]


async def test_a_lease_refused_while_reserving_leaves_nothing_held(uow):
    tenant_id = await tenant(uow)
    reservations = Reservations(Refusing(), uow, per_tenant=1, ttl_s=TTL_S)
    await create(uow, FakeContextLease(), reservations, tenant_id)
    await filled(reservations, tenant_id)
    assert reservations.count(tenant_id) == 0 and not uow.published(LeaseReleased)


class Refusing:
    async def __call__(self, tenant_id, session_id, **_):
        return LeaseReply(ok=False, error="no_capacity")


async def test_a_reservation_expires_by_half_the_confirmation_time_warm_pool_gives_it(uow, clock):
    """With warm_pool reclaiming unconfirmed leases after 8 s, a reservation is good for 4 s, not
    CONTEXT_RESERVE_TTL_S: taken later, its session would start on a context about to be disposed."""
    tenant_id = await tenant(uow)
    reservations = Reservations(ShortConfirm(), uow, per_tenant=1, ttl_s=TTL_S, clock=clock)
    await create(uow, FakeContextLease(), reservations, tenant_id)
    await filled(reservations, tenant_id)
    clock.now += 3.9
    assert reservations.count(tenant_id) == 1
    clock.now += 0.1
    assert reservations.take(tenant_id) is None


class ShortConfirm(FakeContextLease):
    async def __call__(self, tenant_id, session_id, **kw):
        reply = await super().__call__(tenant_id, session_id, **kw)
        return reply.model_copy(update={"confirm_within_s": 8})
