"""The Postgres unit of work (handlers' `uow`): the repository, the outbox and the inbox on one
connection of the service's pool."""
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from services.billing.repository import Repository
from shared import inbox, outbox
from shared.db import transaction
from shared.messages import Event

CONSUMER = "billing"


class PostgresTx:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn
        self.repo = Repository(conn)

    async def publish(self, event: Event) -> None:
        await outbox.add(self.conn, event)

    async def first_delivery(self, message_id: UUID) -> bool:
        return await inbox.first_delivery(self.conn, message_id=message_id, consumer=CONSUMER)

    @asynccontextmanager
    async def savepoint(self):
        """A nested transaction: an exception undoes only what ran inside it."""
        async with self.conn.transaction():
            yield


class PostgresUnitOfWork:
    def __init__(self, db: asyncpg.Pool):
        self.db = db

    @asynccontextmanager
    async def begin(self):
        async with transaction(self.db) as conn:
            yield PostgresTx(conn)

    @asynccontextmanager
    async def connect(self):
        async with self.db.acquire() as conn:
            yield PostgresTx(conn)
