"""Pure rules: what a tenant should have, given its plan and subscription status."""
from dataclasses import dataclass
from uuid import UUID

from shared.plans import Limits


def namespace_for(tenant_id: UUID) -> str:
    return f"tenant-{tenant_id.hex[:12]}"


@dataclass(frozen=True)
class TenantSpec:
    tenant_id: UUID
    namespace: str
    plan: str
    limits: Limits


@dataclass(frozen=True)
class Action:
    kind: str  # "apply" | "delete" | "finish_deprovision"
    tenant_id: UUID
    namespace: str


def spec_of(row) -> TenantSpec:
    return TenantSpec(row["tenant_id"], row["namespace"], row["plan"], Limits(**row["limits"]))


def needs_apply(row, present: set | None, expected: set, *, stale_seconds: float) -> bool:
    """A wanted tenant is (re)applied when objects are missing or its last attempt did not finish,
    but not while a handler is plausibly still working on it."""
    if row["status"] == "provisioning" and row["idle_seconds"] < stale_seconds:
        return False
    return present is None or not expected <= present or row["status"] != "provisioned"


def reconcile_actions(rows, cluster: dict, expected, *, stale_seconds: float) -> list[Action]:
    """rows: tenants table; cluster: tenant id → (namespace, terminating, {(kind, name)}) found by label;
    expected(spec) → the (kind, name) set the tenant should have."""
    wanted = {r["tenant_id"]: r for r in rows if r["desired"] == "present"}
    actions = [Action("delete", tid, found.namespace) for tid, found in cluster.items()
               if tid not in wanted and not found.terminating]
    for tid, row in wanted.items():
        found = cluster.get(tid)
        present = None if found is None or found.terminating else found.objects
        if needs_apply(row, present, expected(spec_of(row)), stale_seconds=stale_seconds):
            actions.append(Action("apply", tid, row["namespace"]))
    for row in rows:
        busy = row["status"] == "deprovisioning" and row["idle_seconds"] < stale_seconds
        if row["desired"] == "absent" and row["status"] != "deprovisioned" and not busy \
                and row["tenant_id"] not in cluster:
            actions.append(Action("finish_deprovision", row["tenant_id"], row["namespace"]))
    return actions
