"""Transactional outbox: `add` inside the state change's transaction; `OutboxRelay` publishes.

The relay wakes on a Postgres NOTIFY sent by the committing transaction (and polls as a
fallback), publishes each pending row persistent + confirmed + mandatory, and marks it sent.
Rows are claimed with FOR UPDATE SKIP LOCKED, so relays of several replicas share the work;
a crash between publish and mark re-publishes, which the consumers' inbox absorbs.
"""
import asyncio
import json
import logging
from datetime import datetime, timezone

import aio_pika.exceptions
import asyncpg
from faststream.rabbit import RabbitBroker

from shared import faults
from shared import metrics
from shared.broker import events_exchange
from shared.logs import log_context
from shared.messages import Event

log = logging.getLogger(__name__)
CHANNEL = "outbox"


async def add(conn: asyncpg.Connection, event: Event, *, headers: dict | None = None) -> None:
    hdrs = dict(headers or {})
    trace_id = log_context.get().get("trace_id")
    if trace_id:
        hdrs.setdefault("trace_id", trace_id)
    await conn.execute(
        "INSERT INTO outbox (id, routing_key, body, headers) VALUES ($1, $2, $3, $4)",
        event.message_id, event.type, event.model_dump(mode="json"), hdrs,
    )
    await conn.execute("SELECT pg_notify($1, '')", CHANNEL)


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, broker: RabbitBroker, *, exchange: str, dsn: str,
                 poll_seconds: float = 1.0, batch: int = 100, user_id: str | None = None):
        self.pool = pool
        self.user_id = user_id  # RabbitMQ checks it is the connection's own user: consumers trust it
        self.broker = broker
        self.exchange = events_exchange(exchange)
        self.dsn = dsn
        self.poll_seconds = poll_seconds
        self.batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listener: asyncpg.Connection | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_listener()

    async def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                await self._listener.close(timeout=2)
            except Exception:
                pass
            self._listener = None

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            async with self.pool.acquire() as conn:
                search_path = await conn.fetchval("SHOW search_path")
            self._listener = await asyncpg.connect(self.dsn, server_settings={"search_path": search_path})
            await self._listener.add_listener(CHANNEL, lambda *_: self._wake.set())
        except Exception as exc:
            log.warning("outbox listener unavailable, polling", extra={"error": str(exc)})
            self._listener = None

    async def _run(self) -> None:
        backoff = self.poll_seconds
        while True:
            # Cleared before draining, not after: a row committed while a batch is being
            # published sets it again, and is published at once rather than at the next poll.
            self._wake.clear()
            try:
                await self._listen()
                while await self.publish_pending():
                    pass
                backoff = self.poll_seconds
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.OUTBOX_FAILURES.inc()
                log.warning("outbox relay error, retrying", extra={"error": repr(exc)[:300]})
                await self._close_listener()
                backoff = min(backoff * 2, 10.0)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except asyncio.TimeoutError:
                pass

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many were published (0 when nothing is pending)."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT id, routing_key, body, headers, created_at FROM outbox"
                    " WHERE published_at IS NULL ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                    self.batch,
                )
                sent, failure = [], None
                for row in rows:
                    faults.point("outbox.before_publish")  # committed, not published
                    try:
                        await self.broker.publish(
                            json.dumps(row["body"]).encode(),
                            exchange=self.exchange,
                            routing_key=row["routing_key"],
                            persist=True,
                            mandatory=True,
                            message_id=str(row["id"]),
                            message_type=row["routing_key"],
                            user_id=self.user_id,
                            content_type="application/json",
                            headers=row["headers"] or None,
                            timeout=10,
                        )
                    except Exception as exc:
                        failure = exc
                        await conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = $2"
                                           " WHERE id = $1", row["id"], repr(exc)[:500])
                        if isinstance(exc, aio_pika.exceptions.PublishError):
                            continue  # returned unroutable: an error, but it must not hold up the rows behind it
                        break
                    faults.point("outbox.after_publish")  # published, not marked sent
                    sent.append(row["id"])
                    metrics.OUTBOX_PUBLISHED.labels(row["routing_key"]).inc()
                if sent:
                    await conn.execute("UPDATE outbox SET published_at = clock_timestamp(),"
                                       " attempts = attempts + 1 WHERE id = ANY($1::uuid[])", sent)
                await self._observe(conn)
        if failure is not None:
            raise failure
        return len(sent)

    async def _observe(self, conn: asyncpg.Connection) -> None:
        row = await conn.fetchrow("SELECT count(*) AS n, min(created_at) AS oldest FROM outbox WHERE published_at IS NULL")
        metrics.OUTBOX_PENDING.set(row["n"])
        lag = (datetime.now(timezone.utc) - row["oldest"]).total_seconds() if row["oldest"] else 0.0
        metrics.OUTBOX_LAG.set(lag)
