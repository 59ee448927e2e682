"""The Postgres unit of work (ports.UnitOfWork): the repository, the outbox and the inbox on one
connection of the service's pool, and the tenant lock that holds one connection per operation."""
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from services.provisioner.repository import Repository
from shared import uow

CONSUMER = "provisioner"


class PostgresTx(uow.PostgresTx):
    consumer = CONSUMER
    repository = Repository

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


class PostgresUnitOfWork(uow.PostgresUnitOfWork):
    tx = PostgresTx

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
