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
