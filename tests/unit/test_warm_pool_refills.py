"""When LocalPool's refills start (services/warm_pool/refills.py), on the fakes of its ports and a
FakeClock: a refill that is not urgent waits REFILL_HOLD_S after the lease it refills for, so its
launch leaves the CPU to the session just leased; an urgent one, or one no lease asked for, does not."""
import uuid

from services.warm_pool import handlers
from services.warm_pool.pool_local import LocalPool
from services.warm_pool.pools import Replica
from shared.messages import LeaseRequest
from tests.fakes.warm_pool import FakeClock, FakeProcessBackend, FakeUnitOfWork
from tests.helpers import eventually
from tests.unit.warm_pool_support import HOST, provision, settings, settle


def held_pool(hold_s: float = 1.0):
    uow, backend, clock = FakeUnitOfWork(), FakeProcessBackend(), FakeClock()
    pool = LocalPool(backend, uow, settings(refill_hold_s=hold_s, max_browsers=16),
                     Replica("replica-a", host=HOST, pid=1), clock=clock)
    return pool, uow, backend, clock


async def lease(pool, uow, tenant_id):
    return await handlers.lease(LeaseRequest(tenant_id=tenant_id, session_id=uuid.uuid4()), pool=pool, uow=uow)


async def holding(pool, clock, tenant_id) -> None:
    """Until the tenant's refill waits out its hold on the clock, every request made so far seen."""
    await eventually(lambda: pool.refills.holding(tenant_id) and clock.sleeping_until(), interval=0.01,
                     what="the refill holding")


def idle(uow, tenant_id) -> int:
    return len(uow.rows(tenant_id=tenant_id, state="idle"))


async def launched(pool, backend, count: int) -> None:
    """Until `count` launches have started and finished (a refill held by mistake fails, not hangs)."""
    await eventually(lambda: len(backend.launches) >= count, interval=0.01, what=f"{count} launches")
    await settle(pool)


async def test_a_refill_not_urgent_starts_refill_hold_s_after_the_lease_it_refills_for():
    pool, uow, backend, clock = held_pool()
    tenant = await provision(pool, uow, prewarm=4)
    assert len(backend.launches) == 4

    assert (await lease(pool, uow, tenant)).warm  # 3 of 4 idle: not urgent
    await holding(pool, clock, tenant)
    assert clock.sleeping_until() == [1.0] and len(backend.launches) == 4
    clock.advance(0.5)
    assert (await lease(pool, uow, tenant)).warm  # 2 of 4: still not urgent
    await handlers.reconcile(pool=pool, uow=uow, confirm_timeout_s=30)
    await holding(pool, clock, tenant)
    # Neither the later lease nor reconcile's request moves the hold: it counts from the first lease.
    assert clock.sleeping_until() == [1.0] and len(backend.launches) == 4
    clock.advance(0.25)
    assert len(backend.launches) == 4
    clock.advance(0.25)
    await launched(pool, backend, 6)

    assert [launch["urgent"] for launch in backend.launches[4:]] == [False, False]  # both leases', one pass
    assert idle(uow, tenant) == 4
    await lease(pool, uow, tenant)  # the next lease's refill holds from its own time
    await holding(pool, clock, tenant)
    assert clock.sleeping_until() == [2.0]
    await handlers.shut_down(pool=pool)  # a held refill ends with the replica, launching nothing
    assert len(backend.launches) == 6


async def test_an_urgent_refill_and_one_no_lease_asked_for_start_at_once():
    pool, uow, backend, clock = held_pool()
    tenant = await provision(pool, uow, prewarm=4)
    for _ in range(3):
        assert (await lease(pool, uow, tenant)).warm  # 1 of 4 idle at the end: below half the target
    await launched(pool, backend, 7)
    assert [launch["urgent"] for launch in backend.launches[4:]] == [True] * 3
    assert idle(uow, tenant) == 4

    backend.crash(uow.rows(tenant_id=tenant, state="idle")[0]["id"])  # 3 of 4 idle, and no lease waits
    await handlers.check_crashes(pool=pool, uow=uow)
    await launched(pool, backend, 8)

    assert len(backend.launches) == 8 and not backend.launches[-1]["urgent"]
    assert idle(uow, tenant) == 4 and clock.time == 0


async def test_without_a_hold_a_refill_starts_right_after_the_lease():
    pool, uow, backend, clock = held_pool(hold_s=0)
    tenant = await provision(pool, uow, prewarm=4)
    await lease(pool, uow, tenant)
    await launched(pool, backend, 5)
    assert len(backend.launches) == 5 and not backend.launches[-1]["urgent"] and clock.time == 0
