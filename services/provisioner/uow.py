"""The Postgres unit of work (ports.UnitOfWork): the repository, the outbox and the inbox on one
connection of the service's pool, and the tenant lock that holds one connection per operation."""
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from services.provisioner.repository import Repository
from shared import inbox, outbox
from shared.db import transaction
from shared.messages import Event

CONSUMER = "provisioner"


class PostgresTx:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn
        self.repo = Repository(conn)

    async def publish(self, event: Event) -> None:
        await outbox.add(self.conn, event)

    async def first_delivery(self, message_id: UUID) -> bool:
        return await inbox.first_delivery(self.conn, message_id=message_id, consumer=CONSUMER)

    async def seen(self, message_id: UUID) -> bool:
        return await self.repo.seen(message_id=message_id, consumer=CONSUMER)


class PostgresLocked:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn
        self.repo = Repository(conn)

    @asynccontextmanager
    async def begin(self):
        async with self.conn.transaction():
            yield PostgresTx(self.conn)


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

    @asynccontextmanager
    async def tenant_lock(self, tenant_id: UUID, *, wait: bool = True):
        async with self.db.acquire() as conn:
            repo = Repository(conn)
            got = await repo.lock_tenant(tenant_id=tenant_id, wait=wait)
            try:
                yield PostgresLocked(conn) if got else None
            finally:
                if got:
                    await repo.unlock_tenant(tenant_id=tenant_id)
