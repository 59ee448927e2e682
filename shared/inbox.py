"""Idempotent consumer: record the message id in the same transaction as the handler's effects."""
from uuid import UUID

import asyncpg


async def first_delivery(conn: asyncpg.Connection, *, message_id: UUID, consumer: str) -> bool:
    """True the first time this consumer sees the message; False on any redelivery."""
    row = await conn.fetchval(
        "INSERT INTO inbox (message_id, consumer) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
        message_id, consumer,
    )
    return row is not None


async def delete_handled(pool: asyncpg.Pool, *, older_than_s: float, batch: int = 1000) -> int:
    """Forget messages handled over `older_than_s` ago, in batches (short locks); how many. A
    redelivery older than that would be taken as new: keep it past any redelivery you expect."""
    deleted = 0
    while True:
        async with pool.acquire() as conn:
            status = await conn.execute(
                "DELETE FROM inbox WHERE (message_id, consumer) IN (SELECT message_id, consumer FROM inbox"
                " WHERE handled_at < clock_timestamp() - make_interval(secs => $1) LIMIT $2"
                " FOR UPDATE SKIP LOCKED)", float(older_than_s), batch)
        n = int(status.split()[-1])
        deleted += n
        if n < batch:
            return deleted
