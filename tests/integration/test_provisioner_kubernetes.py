"""The provisioner's handlers and reconciler with the kubernetes backend, against real Postgres and
a fake Kubernetes API server over HTTP."""
import asyncio
from uuid import UUID, uuid4

import pytest

from services.provisioner import handlers
from services.provisioner.domain import TenantSpec
from services.provisioner.uow import PostgresUnitOfWork
from services.provisioner.adapters.kubernetes import KubernetesBackend
from prometheus_client import REGISTRY
from services.provisioner.settings import ProvisionerSettings
from shared import db
from tests.fakes.kube_api import FakeKubeAPI
from tests.integration.provisioner_support import MIGRATIONS, PLANS, changed, events, payment, tenant

MANAGED = "app.kubernetes.io/managed-by=browserfleet-provisioner"
PLURALS = ["namespaces", "resourcequotas", "limitranges", "networkpolicies", "deployments", "horizontalpodautoscalers"]


@pytest.fixture
def fake():
    api = FakeKubeAPI(terminating_seconds=0.1)
    api.start()
    yield api
    api.stop()


@pytest.fixture
def settings(fake):
    return ProvisionerSettings(kube_api_url=fake.url, kube_retry_attempts=6, kube_retry_base_s=0.01,
                               kube_retry_max_s=0.05, reconcile_stale_s=0)


@pytest.fixture
def backend(settings):
    return KubernetesBackend.from_settings(settings)


@pytest.fixture
async def pool(fresh_db):
    await db.migrate(fresh_db, schema="provisioner", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(fresh_db, schema="provisioner", max_size=10)
    yield pool
    await pool.close()


def owned(fake, tenant_id: UUID) -> set[tuple[str, str]]:
    sel = f"browserfleet.io/tenant={tenant_id}"
    return {(o["kind"], o["metadata"]["name"]) for p in PLURALS for o in fake.list(p, selector=sel)}


EXPECTED = {("Namespace", None), ("ResourceQuota", "tenant-quota"), ("LimitRange", "browser-defaults"),
            ("NetworkPolicy", "default-deny"), ("NetworkPolicy", "allow-gateway-ingress"),
            ("NetworkPolicy", "allow-dns-egress"), ("NetworkPolicy", "allow-internet-egress"),
            ("Deployment", "browsers"), ("HorizontalPodAutoscaler", "browsers")}


def expected(tenant_id: UUID) -> set:
    ns = f"tenant-{tenant_id.hex[:12]}"
    return {(k, n or ns) for k, n in EXPECTED}


async def test_payment_creates_every_object_then_announces_the_tenant(pool, backend, fake):
    tid = uuid4()
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    assert owned(fake, tid) == expected(tid)
    quota = fake.get("resourcequotas", "tenant-quota", f"tenant-{tid.hex[:12]}")
    assert quota["spec"]["hard"]["pods"] == "50"
    assert (await tenant(pool, tid))["status"] == "provisioned"
    (event,) = await events(pool, "provisioner.tenant_provisioned", tid)
    assert event["namespace"] == f"tenant-{tid.hex[:12]}" and event["limits"]["prewarm_browsers"] == 5


async def test_redelivery_and_a_crash_half_way_converge_to_one_state_and_one_event(pool, backend, fake):
    tid = uuid4()
    event = payment(tid)
    spec = TenantSpec(tid, f"tenant-{tid.hex[:12]}", "professional", PLANS["professional"].limits)
    for obj in backend_objects(backend, spec)[:3]:  # what a process killed mid-apply leaves behind
        backend._server_side_apply(obj)
    await handlers.provision(event, uow=PostgresUnitOfWork(pool), backend=backend)
    versions = {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
                for p in PLURALS for o in fake.list(p, selector=MANAGED)}
    await handlers.provision(event, uow=PostgresUnitOfWork(pool), backend=backend)  # redelivered
    await backend.apply(spec)                                     # applied again: nothing moves
    assert owned(fake, tid) == expected(tid)
    assert versions == {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
                        for p in PLURALS for o in fake.list(p, selector=MANAGED)}
    assert len(await events(pool, "provisioner.tenant_provisioned", tid)) == 1


def backend_objects(backend, spec):
    from services.provisioner import manifests
    return manifests.build(spec, backend.settings)


async def test_500s_and_429s_mid_provisioning_are_retried_until_it_converges(pool, backend, fake):
    tid = uuid4()
    fake.fail_next(3, 500, method="PATCH", after=2)
    fake.fail_next(2, 429, method="PATCH", after=4)
    fake.fail_next(1, 503, method="GET")
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    assert owned(fake, tid) == expected(tid)
    assert (await tenant(pool, tid))["status"] == "provisioned"


async def test_slow_answers_time_out_and_are_retried(pool, settings, fake):
    tid = uuid4()
    impatient = KubernetesBackend.from_settings(settings.model_copy(update={"kube_request_timeout_s": 0.2}))
    fake.fail_next(2, None, method="PATCH", delay=0.5)
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=impatient)
    assert owned(fake, tid) == expected(tid)
    assert (await tenant(pool, tid))["status"] == "provisioned"


async def test_connection_refused_is_retried(pool, settings, fake):
    tid = uuid4()
    dead = KubernetesBackend.from_settings(settings.model_copy(update={"kube_api_url": "http://127.0.0.1:9"}))
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=dead)
    row = await tenant(pool, tid)
    assert row["status"] == "failed" and "after 6 attempts" in row["last_error"]


async def test_a_tenant_that_keeps_failing_is_visible_then_recovered_by_the_reconciler(pool, backend, fake):
    tid = uuid4()
    failures = lambda: REGISTRY.get_sample_value("provisioner_failures_total", {"operation": "provision"}) or 0
    before = failures()
    fake.fail_next(1000, 500, method="PATCH")
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    row = await tenant(pool, tid)
    assert row["status"] == "failed" and "500" in row["last_error"] and row["attempts"] == 1
    assert failures() == before + 1
    assert await events(pool, "provisioner.tenant_provisioned", tid) == []
    fake.clear_faults()
    await handlers.reconcile(uow=PostgresUnitOfWork(pool), backend=backend, stale_seconds=0)
    assert owned(fake, tid) == expected(tid)
    row = await tenant(pool, tid)
    assert row["status"] == "provisioned" and row["last_error"] is None
    assert len(await events(pool, "provisioner.tenant_provisioned", tid)) == 1


async def test_cancel_deletes_the_namespace_and_waits_out_terminating(pool, backend, fake):
    tid = uuid4()
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    seen = len(fake.requests)
    await handlers.subscription_changed(changed(tid, "canceled"), uow=PostgresUnitOfWork(pool), backend=backend)
    calls = fake.requests[seen:]
    ns_path = f"/api/v1/namespaces/tenant-{tid.hex[:12]}"
    assert calls[0] == ("DELETE", ns_path) and calls[-1] == ("GET", ns_path) and len(calls) > 2
    assert owned(fake, tid) == set() and fake.list("namespaces") == []
    assert (await tenant(pool, tid))["status"] == "deprovisioned"
    (event,) = await events(pool, "provisioner.tenant_deprovisioned", tid)
    assert event["namespace"] == f"tenant-{tid.hex[:12]}"


async def test_plan_changes_update_quota_and_hpa(pool, backend, fake):
    tid = uuid4()
    ns = f"tenant-{tid.hex[:12]}"
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    await handlers.subscription_changed(changed(tid, "active", "enterprise"), uow=PostgresUnitOfWork(pool), backend=backend)
    assert fake.get("resourcequotas", "tenant-quota", ns)["spec"]["hard"]["pods"] == "500"
    hpa = fake.get("horizontalpodautoscalers", "browsers", ns)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (20, 500)
    assert (await tenant(pool, tid))["plan"] == "enterprise"

    await handlers.provision(payment(tid, "starter"), uow=PostgresUnitOfWork(pool), backend=backend)  # a new payment, another plan
    assert fake.get("resourcequotas", "tenant-quota", ns)["spec"]["hard"]["pods"] == "1"
    assert fake.get("horizontalpodautoscalers", "browsers", ns) is None
    assert fake.get("deployments", "browsers", ns)["spec"]["replicas"] == 0

    await handlers.subscription_changed(changed(tid, "active", "professional"), uow=PostgresUnitOfWork(pool), backend=backend)
    assert fake.get("horizontalpodautoscalers", "browsers", ns)["spec"]["minReplicas"] == 5
    assert "replicas" not in fake.get("deployments", "browsers", ns)["spec"]  # left to the HPA
    plans = [e["plan"] for e in await events(pool, "provisioner.tenant_provisioned", tid)]
    assert plans == ["professional", "enterprise", "starter", "professional"]


async def test_past_due_or_unchanged_plan_touches_nothing(pool, backend, fake):
    tid = uuid4()
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    seen = len(fake.requests)
    await handlers.subscription_changed(changed(tid, "past_due"), uow=PostgresUnitOfWork(pool), backend=backend)
    await handlers.subscription_changed(changed(tid, "active"), uow=PostgresUnitOfWork(pool), backend=backend)
    assert fake.requests[seen:] == []


async def test_resubscribing_after_cancel_provisions_again(pool, backend, fake):
    tid = uuid4()
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    await handlers.subscription_changed(changed(tid, "canceled"), uow=PostgresUnitOfWork(pool), backend=backend)
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    assert owned(fake, tid) == expected(tid)
    row = await tenant(pool, tid)
    assert (row["status"], row["desired"]) == ("provisioned", "present")


async def test_fifty_provision_cancel_cycles_leave_nothing_without_an_active_tenant(pool, backend, fake):
    fake.terminating_seconds = 0.02
    keep = uuid4()
    await handlers.provision(payment(keep), uow=PostgresUnitOfWork(pool), backend=backend)
    gone = [uuid4() for _ in range(50)]

    async def cycle(tid):
        await handlers.provision(payment(tid, "starter" if tid.int % 2 else "professional"), uow=PostgresUnitOfWork(pool), backend=backend)
        await handlers.subscription_changed(changed(tid, "canceled"), uow=PostgresUnitOfWork(pool), backend=backend)

    for batch in range(0, 50, 4):
        await asyncio.gather(*(cycle(t) for t in gone[batch:batch + 4]))
    leftovers = {(p, o["metadata"].get("namespace"), o["metadata"]["name"])
                 for p in PLURALS for o in fake.list(p)
                 if o["metadata"].get("labels", {}).get("browserfleet.io/tenant") != str(keep)}
    assert leftovers == set()
    assert await handlers.reconcile(uow=PostgresUnitOfWork(pool), backend=backend, stale_seconds=0) == []  # nothing to clean up
    assert owned(fake, keep) == expected(keep)
    async with pool.acquire() as conn:
        statuses = await conn.fetch("SELECT status, count(*) FROM tenants GROUP BY status ORDER BY status")
    assert [tuple(r) for r in statuses] == [("deprovisioned", 50), ("provisioned", 1)]


async def test_reconciler_removes_orphans_and_recreates_what_is_missing(pool, backend, fake):
    tid, orphan = uuid4(), uuid4()
    ns = f"tenant-{tid.hex[:12]}"
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    labels = {"app.kubernetes.io/managed-by": "browserfleet-provisioner", "browserfleet.io/tenant": str(orphan)}
    fake.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant-orphan", "labels": labels}})
    fake.put_object({"apiVersion": "v1", "kind": "ResourceQuota",
                     "metadata": {"name": "tenant-quota", "namespace": "tenant-orphan", "labels": labels}})
    fake.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "not-ours"}})
    fake.delete_object("resourcequotas", "tenant-quota", ns)
    fake.delete_object("networkpolicies", "default-deny", ns)

    done = await handlers.reconcile(uow=PostgresUnitOfWork(pool), backend=backend, stale_seconds=0)
    assert sorted(a.kind for a in done) == ["apply", "delete"]
    assert owned(fake, tid) == expected(tid)
    assert fake.get("namespaces", "tenant-orphan") is None and fake.list("resourcequotas", "tenant-orphan") == []
    assert fake.get("namespaces", "not-ours") is not None
    assert len(await events(pool, "provisioner.tenant_provisioned", tid)) == 1  # no second announcement
    assert await handlers.reconcile(uow=PostgresUnitOfWork(pool), backend=backend, stale_seconds=0) == []


async def test_reconciler_finishes_a_cancel_that_failed(pool, backend, fake):
    tid = uuid4()
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    fake.fail_next(1000, 500, method="DELETE")
    await handlers.subscription_changed(changed(tid, "canceled"), uow=PostgresUnitOfWork(pool), backend=backend)
    row = await tenant(pool, tid)
    assert (row["status"], row["desired"]) == ("failed", "absent")
    fake.clear_faults()
    await handlers.reconcile(uow=PostgresUnitOfWork(pool), backend=backend, stale_seconds=0)
    assert owned(fake, tid) == set()
    assert (await tenant(pool, tid))["status"] == "deprovisioned"
    assert len(await events(pool, "provisioner.tenant_deprovisioned", tid)) == 1


async def test_a_payment_redelivered_after_the_cancel_does_not_resurrect_the_tenant(pool, backend, fake):
    tid = uuid4()
    old = payment(tid)
    await handlers.provision(old, uow=PostgresUnitOfWork(pool), backend=backend)
    async with pool.acquire() as conn:  # as if the process died before recording the message
        await conn.execute("DELETE FROM inbox WHERE message_id = $1", old.message_id)
    await handlers.subscription_changed(changed(tid, "canceled"), uow=PostgresUnitOfWork(pool), backend=backend)
    await handlers.provision(old, uow=PostgresUnitOfWork(pool), backend=backend)
    assert owned(fake, tid) == set() and (await tenant(pool, tid))["status"] == "deprovisioned"
