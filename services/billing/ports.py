"""The ports of billing's handlers: the unit of work (Postgres in uow.py, a fake in tests/fakes/billing.py),
Stripe (adapters/stripe.StripeAPI) and the credential check (adapters/credentials.Credentials)."""
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol
from uuid import UUID

from shared.messages import Event


class Tx(Protocol):
    """One unit of work: the repository, the outbox and the inbox, on one connection."""
    repo: Any  # services.billing.repository.Repository (or its fake)

    async def publish(self, event: Event) -> None:
        """Into the outbox, committed with the rest of the transaction."""

    async def first_delivery(self, message_id: UUID) -> bool:
        """True the first time billing sees this message (recorded in the inbox)."""

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested transaction: an exception inside undoes only its own effects."""


class UnitOfWork(Protocol):
    def begin(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction, committed when the block ends without an exception."""

    def connect(self) -> AbstractAsyncContextManager[Tx]:
        """No transaction: reads, or statements that commit on their own."""
