"""The ports of sessions' handlers: the unit of work (Postgres in uow.py, a fake in
tests/fakes/sessions.py), `Lease` (ask warm_pool for a browser: adapters/lease.LeaseClient),
`Ended` (close this replica's relays of a session that just ended: relays.Relays.end),
`EndSession` (the relay ends its session as its client asked) and `Credentials` (whose API key
or dashboard sign-in this is: dashboard/sign_ins.DashboardAuth)."""
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol
from uuid import UUID

from shared.messages import Event, LeaseReply


class Tx(Protocol):
    """One unit of work: the repositories, the outbox and the inbox, on one connection."""
    repo: Any       # services.sessions.repository.Repository (or its fake)
    dashboard: Any  # services.sessions.dashboard.repository.DashboardRepository

    async def publish(self, event: Event) -> None:
        """Into the outbox, committed with the rest of the transaction."""

    async def first_delivery(self, message_id: UUID) -> bool:
        """True the first time sessions sees this message (recorded in the inbox)."""


class UnitOfWork(Protocol):
    def begin(self, *, flush: bool = True) -> AbstractAsyncContextManager[Tx]:
        """A transaction, committed when the block ends without an exception."""

    def connect(self) -> AbstractAsyncContextManager[Tx]:
        """No transaction: reads, or statements that commit on their own."""


class Lease(Protocol):
    async def __call__(self, tenant_id: UUID, session_id: UUID, *, isolation: str,
                       profile_id: UUID | None = None, persist: bool = False, ahead: bool = False) -> LeaseReply: ...


class Ended(Protocol):
    def __call__(self, session_id: UUID, reason: str) -> None: ...


class EndSession(Protocol):
    async def __call__(self, session_id: UUID) -> None: ...


class Credentials(Protocol):
    async def tenant_for(self, credential: str | None) -> UUID: ...
