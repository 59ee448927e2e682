"""Local backend: a single trusted host has no namespaces to create; the tenant is recorded only."""
from services.provisioner.domain import TenantSpec


class LocalBackend:
    async def apply(self, spec: TenantSpec) -> None:
        return None

    async def delete(self, namespace: str) -> None:
        return None
