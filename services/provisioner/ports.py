"""The ports of the provisioner's handlers: the unit of work (Postgres in uow.py, a fake in
tests/fakes/provisioner.py) and the backend that applies a tenant's resources (adapters/)."""
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol
from uuid import UUID

from services.provisioner.domain import TenantSpec
from shared.messages import Event


class Tx(Protocol):
    """One unit of work: the repository, the outbox and the inbox, on one connection."""
    repo: Any  # services.provisioner.repository.Repository (or its fake)

    async def publish(self, event: Event) -> None:
        """Into the outbox, committed with the rest of the transaction."""

    async def first_delivery(self, message_id: UUID) -> bool:
        """True the first time the provisioner sees this message (recorded in the inbox)."""

    async def seen(self, message_id: UUID) -> bool:
        """Was this message handled already (its inbox row), without recording it."""


class Locked(Protocol):
    """A tenant's lock, held on one connection that also carries that operation's transactions
    (one pooled connection per operation: concurrent messages queue for the pool, never deadlock on it)."""
    repo: Any  # statements outside a transaction, on the locked connection

    def begin(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction on the locked connection."""


class UnitOfWork(Protocol):
    def begin(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction, committed when the block ends without an exception."""

    def connect(self) -> AbstractAsyncContextManager[Tx]:
        """No transaction: reads, or statements that commit on their own."""

    def tenant_lock(self, tenant_id: UUID, *, wait: bool = True) -> AbstractAsyncContextManager[Locked | None]:
        """The tenant's lock (across replicas) until the block ends; None when `wait` is False and
        another holder has it."""


class Backend(Protocol):
    """Applies and deletes a tenant's resources (adapters/local.py, adapters/kubernetes.py)."""

    async def apply(self, spec: TenantSpec) -> None: ...
    async def delete(self, namespace: str) -> None: ...


class ClusterBackend(Backend, Protocol):
    """A backend whose resources can drift from the tenants table: the reconciler compares them."""

    async def inventory(self) -> dict[UUID, Any]:
        """Tenant id → what the cluster holds for it (namespace, terminating, {(kind, name)})."""

    def expected(self, spec: TenantSpec) -> set[tuple[str, str]]:
        """The (kind, name) set the tenant should have."""
