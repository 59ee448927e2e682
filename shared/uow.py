"""The Postgres unit of work every service's handlers get as `uow`: its repository, the outbox and
the inbox on one connection of the service's pool. A service names its repository and consumer."""
from contextlib import asynccontextmanager
from typing import ClassVar
from uuid import UUID

import asyncpg

from shared import inbox, outbox
from shared.db import transaction
from shared.messages import Event


class PostgresTx:
    consumer: ClassVar[str]
    repository: ClassVar[type]

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn
        self.repo = self.repository(conn)

    async def publish(self, event: Event) -> None:
        await outbox.add(self.conn, event)

    async def first_delivery(self, message_id: UUID) -> bool:
        return await inbox.first_delivery(self.conn, message_id=message_id, consumer=self.consumer)


class PostgresUnitOfWork:
    tx: ClassVar[type[PostgresTx]]

    def __init__(self, db: asyncpg.Pool):
        self.db = db

    @asynccontextmanager
    async def begin(self, *, flush: bool = True):
        """`flush=False`: see shared.db.transaction (only when a later flushed commit covers it)."""
        async with transaction(self.db, flush=flush) as conn:
            yield self.tx(conn)

    @asynccontextmanager
    async def connect(self):
        async with self.db.acquire() as conn:
            yield self.tx(conn)
