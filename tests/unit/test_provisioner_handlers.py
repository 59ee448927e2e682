"""The provisioner's handlers and reconciler against fakes of their ports (tests/fakes/provisioner.py):
provisioning, redeliveries, failures, cancels, plan changes and reconciliation, with no database,
broker or cluster."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from services.provisioner import handlers
from services.provisioner.domain import TenantSpec, namespace_for
from services.provisioner.repository import Repository
from shared.messages import PaymentVerified, SubscriptionChanged, TenantDeprovisioned, TenantProvisioned
from shared.plans import load_plans
from shared.settings import DEFAULT_PLANS_FILE
from tests.fakes.provisioner import FakeCluster, FakeRepository, FakeUnitOfWork, Found
from tests.fakes.uow import assert_same_methods

PLANS = load_plans(DEFAULT_PLANS_FILE)
NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture
def uow():
    return FakeUnitOfWork()


@pytest.fixture
def cluster():
    return FakeCluster()


def payment(tenant_id, plan="professional", at=NOW) -> PaymentVerified:
    return PaymentVerified(tenant_id=tenant_id, subscription_id=f"sub_{tenant_id.hex[:8]}", plan=plan,
                           period_start=at, period_end=at + timedelta(days=30), credits=PLANS[plan].credits,
                           limits=PLANS[plan].limits, occurred_at=at)


def changed(tenant_id, status, plan="professional", at=NOW + timedelta(minutes=1)) -> SubscriptionChanged:
    return SubscriptionChanged(tenant_id=tenant_id, plan=plan, status=status, limits=PLANS[plan].limits,
                               occurred_at=at)


async def provisioned(uow, cluster, plan="professional") -> uuid.UUID:
    tenant_id = uuid.uuid4()
    await handlers.provision(payment(tenant_id, plan), uow=uow, backend=cluster)
    return tenant_id


def status(uow, tenant_id) -> str:
    return uow.tenants[tenant_id]["status"]


async def reconcile(uow, cluster, stale_seconds=0):
    return [(a.kind, a.tenant_id) for a in await handlers.reconcile(uow=uow, backend=cluster,
                                                                     stale_seconds=stale_seconds)]


def test_the_fake_repository_has_the_real_ones_methods_and_parameters():
    assert_same_methods(Repository, FakeRepository)


# --- provisioning ---------------------------------------------------------------------------

async def test_a_payment_applies_the_tenant_then_announces_it_once_whatever_the_redeliveries(uow, cluster):
    tenant_id = uuid.uuid4()
    event = payment(tenant_id)
    for _ in range(3):
        await handlers.provision(event, uow=uow, backend=cluster)
    assert status(uow, tenant_id) == "provisioned" and len(cluster.applied) == 1
    assert cluster.found[tenant_id].objects == cluster.expected(cluster.applied[0])
    [announced] = uow.published(TenantProvisioned)
    assert (announced.tenant_id, announced.namespace, announced.plan, announced.limits) == \
        (tenant_id, namespace_for(tenant_id), "professional", PLANS["professional"].limits)


async def test_a_failed_apply_is_recorded_and_acked_then_the_reconciler_converges_it(uow, cluster):
    cluster.fail = RuntimeError("the API server said 500")
    tenant_id = await provisioned(uow, cluster)
    row = uow.tenants[tenant_id]
    assert (row["status"], row["attempts"]) == ("failed", 1) and "500" in row["last_error"]
    assert uow.outbox == []
    await handlers.provision(payment(tenant_id), uow=uow, backend=cluster)  # another payment: tried again
    assert uow.tenants[tenant_id]["status"] == "failed"
    cluster.fail = None
    assert await reconcile(uow, cluster) == [("apply", tenant_id)]
    assert status(uow, tenant_id) == "provisioned" and len(uow.published(TenantProvisioned)) == 1
    assert await reconcile(uow, cluster) == []  # converged


async def test_the_same_failed_message_redelivered_is_not_retried_by_the_handler(uow, cluster):
    cluster.fail = RuntimeError("boom")
    event = payment(uuid.uuid4())
    await handlers.provision(event, uow=uow, backend=cluster)
    await handlers.provision(event, uow=uow, backend=cluster)
    assert len(cluster.applied) == 1  # its failure was recorded with its inbox row: the reconciler's now


# --- cancels and plan changes -----------------------------------------------------------------

async def test_a_cancel_deletes_the_namespace_and_announces_it_once(uow, cluster):
    tenant_id = await provisioned(uow, cluster)
    cancel = changed(tenant_id, "canceled")
    await handlers.subscription_changed(cancel, uow=uow, backend=cluster)
    await handlers.subscription_changed(cancel, uow=uow, backend=cluster)
    await handlers.subscription_changed(changed(tenant_id, "canceled"), uow=uow, backend=cluster)
    assert status(uow, tenant_id) == "deprovisioned" and tenant_id not in cluster.found
    assert cluster.deleted == [namespace_for(tenant_id)]
    assert [e.tenant_id for e in uow.published(TenantDeprovisioned)] == [tenant_id]


async def test_a_payment_older_than_the_cancel_is_ignored_and_a_newer_one_reprovisions(uow, cluster):
    tenant_id = uuid.uuid4()
    old = payment(tenant_id, at=NOW)
    await handlers.provision(old, uow=uow, backend=cluster)
    await handlers.subscription_changed(changed(tenant_id, "canceled", at=NOW + timedelta(hours=1)),
                                        uow=uow, backend=cluster)
    late = payment(tenant_id, at=NOW + timedelta(minutes=30))  # paid before the cancel, delivered after
    await handlers.provision(late, uow=uow, backend=cluster)
    assert status(uow, tenant_id) == "deprovisioned" and tenant_id not in cluster.found
    await handlers.provision(payment(tenant_id, at=NOW + timedelta(days=2)), uow=uow, backend=cluster)
    assert status(uow, tenant_id) == "provisioned" and tenant_id in cluster.found
    assert len(uow.published(TenantProvisioned)) == 2


async def test_a_plan_change_reapplies_the_tenant_and_a_status_change_alone_does_not(uow, cluster):
    tenant_id = await provisioned(uow, cluster)
    await handlers.subscription_changed(changed(tenant_id, "past_due"), uow=uow, backend=cluster)
    await handlers.subscription_changed(changed(tenant_id, "active"), uow=uow, backend=cluster)
    assert len(cluster.applied) == 1
    await handlers.subscription_changed(changed(tenant_id, "active", "starter"), uow=uow, backend=cluster)
    assert [s.plan for s in cluster.applied] == ["professional", "starter"]
    assert ("HorizontalPodAutoscaler", "browsers") not in cluster.found[tenant_id].objects  # starter: none
    row = uow.tenants[tenant_id]
    assert (row["plan"], row["limits"], row["status"]) == ("starter", PLANS["starter"].limits.model_dump(),
                                                          "provisioned")


async def test_a_change_for_a_tenant_never_provisioned_is_only_recorded(uow, cluster):
    event = changed(uuid.uuid4(), "active", "enterprise")
    await handlers.subscription_changed(event, uow=uow, backend=cluster)
    assert cluster.applied == [] and uow.tenants == {} and (event.message_id, "provisioner") in uow.inbox


# --- reconciliation ---------------------------------------------------------------------------

async def test_the_reconciler_deletes_an_orphaned_namespace(uow, cluster):
    orphan = uuid.uuid4()
    cluster.found[orphan] = Found(namespace_for(orphan), False, {("Namespace", namespace_for(orphan))})
    keep = await provisioned(uow, cluster)
    assert await reconcile(uow, cluster) == [("delete", orphan)]
    assert set(cluster.found) == {keep} and uow.published(TenantDeprovisioned) == []


async def test_the_reconciler_restores_missing_objects_of_a_provisioned_tenant(uow, cluster):
    tenant_id = await provisioned(uow, cluster)
    cluster.found[tenant_id].objects.discard(("NetworkPolicy", "default-deny"))
    assert await reconcile(uow, cluster) == [("apply", tenant_id)]
    assert ("NetworkPolicy", "default-deny") in cluster.found[tenant_id].objects
    assert len(uow.published(TenantProvisioned)) == 1  # already announced


async def test_the_reconciler_leaves_a_tenant_a_handler_is_working_on(uow, cluster):
    tenant_id = uuid.uuid4()
    async with uow.tenant_lock(tenant_id) as locked:  # a handler of some replica, mid-apply
        spec = TenantSpec(tenant_id, namespace_for(tenant_id), "starter", PLANS["starter"].limits)
        await locked.repo.upsert_tenant(spec=spec, status="provisioning")
        assert await reconcile(uow, cluster, stale_seconds=60) == []  # not stale yet
        assert await reconcile(uow, cluster, stale_seconds=0) == []   # stale, but its lock is held
    uow.clock += 61
    assert await reconcile(uow, cluster, stale_seconds=60) == [("apply", tenant_id)]
    assert status(uow, tenant_id) == "provisioned"


async def test_a_failed_deprovision_is_finished_by_the_reconciler(uow, cluster):
    tenant_id = await provisioned(uow, cluster)
    cluster.fail = RuntimeError("the API server is down")
    await handlers.subscription_changed(changed(tenant_id, "canceled"), uow=uow, backend=cluster)
    assert status(uow, tenant_id) == "failed" and uow.tenants[tenant_id]["desired"] == "absent"
    cluster.fail = None
    assert await reconcile(uow, cluster) == [("delete", tenant_id)]
    assert status(uow, tenant_id) == "deprovisioned" and tenant_id not in cluster.found
    assert len(uow.published(TenantDeprovisioned)) == 1
    assert await reconcile(uow, cluster) == []
