"""warm_pool's handlers and both pools against fakes of their ports (tests/fakes/warm_pool.py):
lease, refill decisions, crashes, drains and pruning, with no database, broker or browser."""
import inspect
import uuid
from datetime import datetime, timezone

import pytest

from services.warm_pool import handlers
from services.warm_pool.adapters.kubernetes import KubernetesPods
from services.warm_pool.adapters.local import LocalChromium
from services.warm_pool.pool_cluster import ClusterPool
from services.warm_pool.pool_local import LocalPool
from services.warm_pool.pools import Replica
from services.warm_pool.ports import ClusterBackend, Pool, ProcessBackend
from services.warm_pool.repository import Repository
from shared.messages import BrowserCrashed, LeaseRequest, SessionStarted, SubscriptionChanged
from shared.plans import Limits
from tests.fakes.warm_pool import FakeClusterBackend, FakeProcessBackend, FakeRepository, FakeUnitOfWork
from tests.unit.warm_pool_support import HOST, completed, metric, provision, settings, settle


@pytest.fixture
def uow():
    return FakeUnitOfWork()


@pytest.fixture
def backend():
    return FakeProcessBackend()


def local_pool(uow, backend, **kw) -> LocalPool:
    return LocalPool(backend, uow, settings(**kw), Replica("replica-a", host=HOST, pid=1))


@pytest.fixture
def pool(uow, backend):
    return local_pool(uow, backend)


async def lease(pool, uow, tenant_id, session_id=None):
    req = LeaseRequest(tenant_id=tenant_id, session_id=session_id or uuid.uuid4())
    return await handlers.lease(req, pool=pool, uow=uow)


def _members(protocol) -> dict:
    return {n: v for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}


@pytest.mark.parametrize("protocol, implementations", [
    (Pool, [LocalPool, ClusterPool]),
    (ProcessBackend, [LocalChromium, FakeProcessBackend]),
    (ClusterBackend, [KubernetesPods, FakeClusterBackend]),
])
def test_each_port_is_implemented_whole_with_its_parameters(protocol, implementations):
    for impl in implementations:
        for name, fn in _members(protocol).items():
            assert callable(getattr(impl, name, None)), f"{impl.__name__}.{name}"
            want = [p for p in inspect.signature(fn).parameters if p != "self"]
            have = [p for p in inspect.signature(getattr(impl, name)).parameters if p != "self"]
            assert have == want, f"{impl.__name__}.{name}{have} vs {want}"


def test_both_pools_have_the_pools_attributes(uow, backend):
    pools = [local_pool(uow, backend), ClusterPool(FakeClusterBackend(), uow, settings())]
    assert all(hasattr(p, name) for p in pools for name in Pool.__annotations__)


def test_the_fake_repository_has_every_query_of_the_real_one_with_the_same_parameters():
    real = {n: inspect.signature(f) for n, f in vars(Repository).items() if not n.startswith("_")}
    fake = {n: inspect.signature(getattr(FakeRepository, n)) for n in real if hasattr(FakeRepository, n)}
    assert set(fake) == set(real)
    for name, sig in real.items():
        assert list(fake[name].parameters) == list(sig.parameters), name


# --- lease -----------------------------------------------------------------------------------

async def test_a_lease_takes_an_idle_browser_prioritizes_it_and_refills(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=2)
    assert len(uow.rows(tenant_id=tenant, state="idle")) == 2 and len(backend.launches) == 2
    warm_before = metric("warm_pool_leases_total", result="warm")

    reply = await lease(pool, uow, tenant)

    assert reply.ok and reply.warm
    (row,) = uow.rows(id=reply.browser_id)
    assert row["state"] == "leased" and reply.cdp_ws_url == row["cdp_ws_url"]
    assert backend.prioritized == [row["pid"]]
    assert metric("warm_pool_leases_total", result="warm") == warm_before + 1
    await settle(pool)
    assert len(uow.rows(tenant_id=tenant, state="idle")) == 2 and len(backend.launches) == 3


async def test_without_an_idle_browser_a_lease_launches_one_on_demand_at_normal_priority(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=0, max_concurrent=5)
    assert backend.launches == []

    reply = await lease(pool, uow, tenant)

    assert reply.ok and not reply.warm
    (launch,) = backend.launches
    assert launch["urgent"] and launch["tenant_id"] == tenant and launch["tenant_browsers"] == 5
    assert uow.rows(id=reply.browser_id)[0]["state"] == "leased"


async def test_at_the_host_cap_a_lease_answers_no_capacity(uow, backend):
    pool = local_pool(uow, backend, max_browsers=1)
    tenant = await provision(pool, uow, prewarm=0)
    assert (await lease(pool, uow, tenant)).ok

    reply = await lease(pool, uow, tenant)

    assert not reply.ok and reply.error == "no_capacity"
    assert len(backend.launches) == 1 and len(uow.rows(state="leased")) == 1


async def test_at_the_host_cap_another_tenants_idle_browser_makes_room(uow, backend):
    pool = local_pool(uow, backend, max_browsers=1)
    other = await provision(pool, uow, prewarm=0)
    assert (await lease(pool, uow, other)).ok  # the host is full now
    # An idle browser of the other tenant (a refill of it): the lease retires it to make room.
    (busy,) = uow.rows(state="leased")
    busy["state"] = "idle"
    tenant = await provision(pool, uow, prewarm=0)

    reply = await lease(pool, uow, tenant)

    assert reply.ok and busy["id"] in backend.killed and busy["state"] == "dead"


async def test_an_unknown_or_draining_tenant_gets_unknown_tenant(pool, uow, backend):
    assert (await lease(pool, uow, uuid.uuid4())).error == "unknown_tenant"
    tenant = await provision(pool, uow, prewarm=1)
    await handlers.subscription_changed(SubscriptionChanged(tenant_id=tenant, plan="professional", status="canceled"),
                                        pool=pool, uow=uow, plans_file=pool.settings.plans_file)
    assert (await lease(pool, uow, tenant)).error == "unknown_tenant"
    assert len(backend.launches) == 1


async def test_a_retried_request_gets_the_same_browser(pool, uow, backend):
    warm_tenant = await provision(pool, uow, prewarm=1)
    cold_tenant = await provision(pool, uow, prewarm=0)
    for tenant in (warm_tenant, cold_tenant):
        session = uuid.uuid4()
        first = await lease(pool, uow, tenant, session)
        again = await lease(pool, uow, tenant, session)
        assert first.ok and again == first
        assert len(uow.rows(session_id=session)) == 1


async def test_a_tenant_the_host_refuses_gets_no_capacity_with_the_reason(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=0)
    backend.refuse[tenant] = "this host runs browsers without a sandbox (BROWSER_SANDBOX=off) and serves another tenant"

    reply = await lease(pool, uow, tenant)

    assert not reply.ok and reply.error == "no_capacity"
    assert "BROWSER_SANDBOX=off" in reply.message
    assert [r["state"] for r in uow.rows(tenant_id=tenant)] == ["dead"]


async def test_a_failed_launch_answers_error_and_leaves_a_dead_row(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=0)
    backend.fail = True
    assert (await lease(pool, uow, tenant)).error == "error"
    assert [r["state"] for r in uow.rows(tenant_id=tenant)] == ["dead"]


# --- refill decisions --------------------------------------------------------------------------

async def test_refill_starts_the_prewarm_count_urgently_when_the_pool_is_empty(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=3)
    assert [launch["urgent"] for launch in backend.launches] == [True] * 3
    assert len(uow.rows(tenant_id=tenant, state="idle")) == 3
    await handlers.reconcile(pool=pool, uow=uow, confirm_timeout_s=30)
    await settle(pool)
    assert len(backend.launches) == 3  # at target: nothing more


async def test_refill_leaves_room_for_on_demand_launches_at_the_host_cap(pool, uow, backend):
    # max_browsers 8, launch_concurrency 2: refills stop at 8 - min(2, 8 // 4) = 6.
    tenant = await provision(pool, uow, prewarm=10, max_concurrent=20)
    assert len(uow.rows(tenant_id=tenant, state="idle")) == 6
    assert (await lease(pool, uow, tenant)).warm


async def test_a_lower_plan_shrinks_the_idle_pool_at_the_next_reconcile(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=4)
    await handlers.subscription_changed(SubscriptionChanged(
        tenant_id=tenant, plan="starter", status="active",
        limits=Limits(max_concurrent_sessions=2, max_session_seconds=600, prewarm_browsers=1)),
        pool=pool, uow=uow, plans_file=pool.settings.plans_file)

    await handlers.reconcile(pool=pool, uow=uow, confirm_timeout_s=30)

    assert len(uow.rows(tenant_id=tenant, state="idle")) == 1 and len(backend.killed) == 3
    assert len(backend.running) == 1


async def test_a_cancel_drains_idle_browsers_and_leaves_leased_ones_to_their_sessions(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=2)
    leased = await lease(pool, uow, tenant)
    await settle(pool)

    await handlers.subscription_changed(SubscriptionChanged(tenant_id=tenant, plan="professional", status="canceled"),
                                        pool=pool, uow=uow, plans_file=pool.settings.plans_file)
    await settle(pool)

    assert [r["id"] for r in uow.rows(tenant_id=tenant) if r["state"] != "dead"] == [leased.browser_id]
    assert uow.tenants[tenant]["status"] == "draining"


async def test_session_end_kills_its_browser_and_a_redelivery_changes_nothing(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    session = uuid.uuid4()
    reply = await lease(pool, uow, tenant, session)
    started = SessionStarted(session_id=session, tenant_id=tenant, browser_id=reply.browser_id, warm=True,
                             started_at=datetime.now(timezone.utc))
    await handlers.session_started(started, uow=uow)
    assert uow.rows(id=reply.browser_id)[0]["confirmed_at"] is not None

    event = completed(tenant, session, reply.browser_id)
    await handlers.session_completed(event, pool=pool, uow=uow)
    await handlers.session_completed(event, pool=pool, uow=uow)
    await settle(pool)

    assert uow.rows(id=reply.browser_id)[0]["state"] == "dead" and backend.killed == [reply.browser_id]
    assert len(uow.rows(tenant_id=tenant, state="idle")) == 1


async def test_another_replicas_browser_is_retired_but_left_to_its_owner(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    reply = await lease(pool, uow, tenant)
    uow.rows(id=reply.browser_id)[0]["replica_id"] = "replica-b"

    await handlers.session_completed(completed(tenant, uuid.uuid4(), reply.browser_id), pool=pool, uow=uow)

    assert uow.rows(id=reply.browser_id)[0]["state"] == "retiring" and reply.browser_id not in backend.killed


async def test_an_unconfirmed_lease_is_reclaimed(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    reply = await lease(pool, uow, tenant)
    await settle(pool)
    uow.clock += 31

    await handlers.reconcile(pool=pool, uow=uow, confirm_timeout_s=30)

    assert uow.rows(id=reply.browser_id)[0]["state"] == "dead" and reply.browser_id in backend.killed


# --- crashes ---------------------------------------------------------------------------------

async def test_a_crashed_leased_browser_is_reported_and_replaced(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    session = uuid.uuid4()
    reply = await lease(pool, uow, tenant, session)
    await settle(pool)
    before = metric("warm_pool_browser_crashes_total", state="leased")
    backend.crash(reply.browser_id)

    await handlers.check_crashes(pool=pool, uow=uow)
    await settle(pool)

    assert uow.rows(id=reply.browser_id)[0]["state"] == "dead" and reply.browser_id in backend.killed
    (event,) = uow.outbox
    assert isinstance(event, BrowserCrashed)
    assert (event.browser_id, event.tenant_id, event.session_id) == (reply.browser_id, tenant, session)
    assert metric("warm_pool_browser_crashes_total", state="leased") == before + 1
    assert len(uow.rows(tenant_id=tenant, state="idle")) == 1


async def test_a_crashed_idle_browser_is_replaced_without_a_report(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    (idle,) = uow.rows(state="idle")
    backend.crash(idle["id"])

    await handlers.check_crashes(pool=pool, uow=uow)
    await settle(pool)

    assert uow.outbox == [] and idle["state"] == "dead"
    assert len(uow.rows(tenant_id=tenant, state="idle")) == 1


async def test_a_browser_that_dies_while_retiring_is_no_crash(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    reply = await lease(pool, uow, tenant)
    await settle(pool)
    uow.rows(id=reply.browser_id)[0]["state"] = "retiring"
    before = metric("warm_pool_browser_crashes_total", state="retiring")
    backend.crash(reply.browser_id)

    await handlers.check_crashes(pool=pool, uow=uow)

    assert uow.outbox == [] and metric("warm_pool_browser_crashes_total", state="retiring") == before
    assert uow.rows(id=reply.browser_id)[0]["state"] == "dead"


async def test_shut_down_ends_every_browser_of_the_replica_and_reports_the_leased_ones(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=2)
    reply = await lease(pool, uow, tenant)

    await handlers.shut_down(pool=pool)

    assert backend.closed and all(r["state"] == "dead" for r in uow.rows())
    assert [e.browser_id for e in uow.outbox] == [reply.browser_id]


async def test_start_up_removes_a_dead_predecessors_browsers_and_reports_its_leased_ones(uow, backend):
    before = local_pool(uow, backend)
    tenant = await provision(before, uow, prewarm=1)
    reply = await lease(before, uow, tenant)
    await settle(before)
    successor = LocalPool(backend, uow, settings(replica_id="replica-a2"), Replica("replica-a2", host=HOST, pid=2))

    await handlers.start_up(pool=successor)

    assert all(r["state"] == "dead" for r in uow.rows()) and len(backend.killed) == 2
    assert [e.browser_id for e in uow.outbox] == [reply.browser_id]


# --- pruning ---------------------------------------------------------------------------------

async def test_prune_deletes_only_dead_rows_past_their_retention(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    old = await lease(pool, uow, tenant)
    await handlers.session_completed(completed(tenant, uuid.uuid4(), old.browser_id), pool=pool, uow=uow)
    await settle(pool)
    uow.clock += 100
    recent = await lease(pool, uow, tenant)
    await handlers.session_completed(completed(tenant, uuid.uuid4(), recent.browser_id), pool=pool, uow=uow)
    await settle(pool)
    before = metric("warm_pool_dead_browsers_pruned_total")

    assert await handlers.prune(uow=uow, retention_s=50) == 1

    assert not uow.rows(id=old.browser_id) and uow.rows(id=recent.browser_id)[0]["state"] == "dead"
    assert len(uow.rows(state="idle")) == 1
    assert metric("warm_pool_dead_browsers_pruned_total") == before + 1


# --- the cluster pool ------------------------------------------------------------------------

@pytest.fixture
def cluster():
    return FakeClusterBackend()


@pytest.fixture
def cluster_pool(uow, cluster):
    return ClusterPool(cluster, uow, settings(), Replica("replica-a", host=HOST, pid=1))


async def test_a_cluster_lease_claims_a_ready_pod_and_records_where_it_lives(cluster_pool, uow, cluster):
    tenant = await provision(cluster_pool, uow, prewarm=0, namespace="tenant-x")
    cluster.ready["tenant-x"] = 1
    session = uuid.uuid4()

    reply = await lease(cluster_pool, uow, tenant, session)

    assert reply.ok and reply.warm
    (row,) = uow.rows(tenant_id=tenant)
    assert row["state"] == "leased" and row["pod"].startswith("tenant-x/") and row["profile_dir"] is None
    assert await lease(cluster_pool, uow, tenant, session) == reply
    assert (await lease(cluster_pool, uow, tenant)).error == "no_capacity"


async def test_a_cluster_pods_loss_is_reported_and_a_cancel_ends_its_leased_pods(cluster_pool, uow, cluster):
    tenant = await provision(cluster_pool, uow, prewarm=0, namespace="tenant-x")
    cluster.ready["tenant-x"] = 3
    lost, kept, other = [await lease(cluster_pool, uow, tenant) for _ in range(3)]
    cluster.leased_pods[lost.browser_id] = False  # not Ready any more

    await handlers.check_crashes(pool=cluster_pool, uow=uow)

    assert [e.browser_id for e in uow.outbox] == [lost.browser_id] and lost.browser_id in cluster.killed
    uow.rows(id=other.browser_id)[0]["replica_id"] = "replica-b"  # any replica may end a pod
    await handlers.subscription_changed(SubscriptionChanged(tenant_id=tenant, plan="professional", status="canceled"),
                                        pool=cluster_pool, uow=uow, plans_file=cluster_pool.settings.plans_file)
    assert all(r["state"] == "dead" for r in uow.rows(tenant_id=tenant)) and not cluster.leased_pods
    assert len(uow.outbox) == 1  # ended on purpose, not crashed


async def test_cluster_start_up_deletes_leased_pods_without_a_lease(cluster_pool, uow, cluster):
    tenant = await provision(cluster_pool, uow, prewarm=0, namespace="tenant-x")
    cluster.ready["tenant-x"] = 2
    kept, ended = await lease(cluster_pool, uow, tenant), await lease(cluster_pool, uow, tenant)
    uow.rows(id=ended.browser_id)[0]["state"] = "dead"  # its session ended while no replica ran

    await handlers.start_up(pool=cluster_pool)

    assert list(cluster.leased_pods) == [kept.browser_id] and cluster.killed == [ended.browser_id]
