"""The ports of billing's handlers: the unit of work (Postgres in uow.py, a fake in tests/fakes/billing.py),
Stripe (`StripeAPI`: adapters/stripe.StripeGateway) and the credential check (`Credentials`:
adapters/credentials.CredentialsClient)."""
from contextlib import AbstractAsyncContextManager
from datetime import datetime
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


class StripeAPI(Protocol):
    async def create_checkout_session(self, *, price_id: str, tenant_id: str, plan: str, email: str | None,
                                      customer: str | None, success_url: str, cancel_url: str) -> str: ...
    async def send_meter_event(self, *, event_name: str, identifier: str, customer: str, value: int,
                               timestamp: datetime) -> None: ...


class CredentialsUnavailable(Exception):
    """sessions did not answer (down, or the broker is): neither yes nor no."""


class Credentials(Protocol):
    async def tenant_for(self, credential: str) -> UUID | None:
        """The tenant of this API key or dashboard sign-in; None if it is no live credential;
        CredentialsUnavailable when that cannot be known now."""
