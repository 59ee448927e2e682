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
