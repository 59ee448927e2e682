"""The Postgres unit of work (handlers' `uow`): the repository, the outbox and the inbox on one
connection of the service's pool."""
from contextlib import asynccontextmanager

from services.billing.repository import Repository
from shared import uow

CONSUMER = "billing"


class PostgresTx(uow.PostgresTx):
    consumer = CONSUMER
    repository = Repository

    @asynccontextmanager
    async def savepoint(self):
        """A nested transaction: an exception undoes only what ran inside it."""
        async with self.conn.transaction():
            yield


class PostgresUnitOfWork(uow.PostgresUnitOfWork):
    tx = PostgresTx
