"""The reconciler's decisions, as a pure function of the tenants table and what the cluster holds."""
from uuid import uuid4

from services.provisioner.adapters.kubernetes import ClusterTenant
from services.provisioner.domain import reconcile_actions
from shared.plans import Limits

LIMITS = Limits(max_concurrent_sessions=50, max_session_seconds=3600, prewarm_browsers=5).model_dump()
FULL = {("Namespace", "ns"), ("ResourceQuota", "tenant-quota")}


def row(status="provisioned", desired="present", idle=999.0):
    tid = uuid4()
    return {"tenant_id": tid, "namespace": "ns", "plan": "professional", "limits": LIMITS, "status": status,
            "desired": desired, "idle_seconds": idle}


def decide(rows, cluster, stale=60):
    return [(a.kind, a.tenant_id) for a in reconcile_actions(rows, cluster, lambda spec: FULL, stale_seconds=stale)]


def test_a_complete_provisioned_tenant_needs_nothing():
    r = row()
    assert decide([r], {r["tenant_id"]: ClusterTenant("ns", False, set(FULL))}) == []


def test_missing_objects_or_namespace_are_recreated():
    partial, gone = row(), row()
    cluster = {partial["tenant_id"]: ClusterTenant("ns", False, {("Namespace", "ns")})}
    assert decide([partial, gone], cluster) == [("apply", partial["tenant_id"]), ("apply", gone["tenant_id"])]


def test_failed_tenants_are_retried_but_fresh_in_flight_ones_are_left_to_their_handler():
    failed, busy, stuck = row("failed"), row("provisioning", idle=1), row("provisioning", idle=600)
    assert decide([failed, busy, stuck], {}) == [("apply", failed["tenant_id"]), ("apply", stuck["tenant_id"])]


def test_namespaces_without_an_active_tenant_are_deleted():
    canceled, unknown, terminating = row("failed", "absent"), uuid4(), uuid4()
    cluster = {canceled["tenant_id"]: ClusterTenant("a", False, set()), unknown: ClusterTenant("b", False, set()),
               terminating: ClusterTenant("c", True, set())}
    assert decide([canceled], cluster) == [("delete", canceled["tenant_id"]), ("delete", unknown)]


def test_a_cancel_whose_namespace_is_gone_is_finished():
    done, pending, busy = row("deprovisioned", "absent"), row("failed", "absent"), row("deprovisioning", "absent", 1)
    assert decide([done, pending, busy], {}) == [("finish_deprovision", pending["tenant_id"])]
