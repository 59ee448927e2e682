"""Transactional outbox: `add` inside the state change's transaction; `OutboxRelay` publishes.

The relay wakes on a Postgres NOTIFY sent by the committing transaction (and polls as a
fallback), publishes each pending row persistent + confirmed + mandatory, and marks it sent.
Rows are claimed with FOR UPDATE SKIP LOCKED, so relays of several replicas share the work;
a crash between publish and mark re-publishes, which the consumers' inbox absorbs.

A row the broker returns unroutable (no queue bound to its routing key) is retried on a
schedule of its own, so a consumer still starting up gets it, and after `park_after` returns it
is parked (state `parked`, `outbox_parked`) until an operator replays or discards it (admin
routes below, `browserfleet outbox ...`). Either way the relay goes on with the rows behind it
at once: only a failure of the broker or the database itself makes the relay back off.
"""
import asyncio
import contextlib
import json
import logging
from datetime import datetime, timezone
from uuid import UUID

import aio_pika.exceptions
import asyncpg
from fastapi import APIRouter, Request
from faststream.rabbit import RabbitBroker
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from shared import faults
from shared import metrics
from shared.broker import events_exchange
from shared.http import APIError, error_responses, require_admin
from shared.logs import log_context
from shared.messages import Event

log = logging.getLogger(__name__)
CHANNEL = "outbox"
MAX_RETRY_SECONDS = 30.0


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


def retry_delay(returned: int) -> float:
    """Seconds before a row returned unroutable `returned` times is tried again: 1, 2, 4, … 30."""
    return min(2.0 ** (returned - 1), MAX_RETRY_SECONDS)


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, broker: RabbitBroker, *, exchange: str, dsn: str,
                 poll_seconds: float = 1.0, batch: int = 100, park_after: int = 8, user_id: str | None = None):
        self.pool = pool
        self.user_id = user_id  # RabbitMQ checks it is the connection's own user: consumers trust it
        self.broker = broker
        self.exchange = events_exchange(exchange)
        self.dsn = dsn
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.park_after = park_after
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
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)
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
        while True:
            # Cleared before draining, not after: a row committed while a batch is being
            # published sets it again, and is published at once rather than at the next poll.
            self._wake.clear()
            await self._drain()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)

    async def _drain(self) -> None:
        """Publish until nothing is due; while the broker or database fails, back off 2, 4, 8, then 10 s."""
        async for attempt in AsyncRetrying(wait=wait_exponential(multiplier=2 * self.poll_seconds, max=10.0),
                                           retry=retry_if_exception_type(Exception), before_sleep=self._failed):
            with attempt:
                await self._listen()
                while await self.publish_pending():
                    pass

    async def _failed(self, state: RetryCallState) -> None:
        metrics.OUTBOX_FAILURES.inc()
        log.warning("outbox relay error, retrying", extra={"error": repr(state.outcome.exception())[:300],
                                                           "retry_in_s": state.upcoming_sleep})
        await self._close_listener()

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many rows it settled (sent, or returned unroutable and
        rescheduled or parked), 0 when nothing is due. Raises when the broker fails."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT id, routing_key, body, headers, returned FROM outbox"
                    " WHERE state = 'pending' AND (retry_at IS NULL OR retry_at <= clock_timestamp())"
                    " ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                    self.batch,
                )
                sent, returned, failure = [], 0, None
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
                    except aio_pika.exceptions.PublishError as exc:  # returned: no queue takes it
                        await self._returned(conn, row, exc)
                        returned += 1
                        continue
                    except Exception as exc:
                        failure = exc
                        await conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = $2"
                                           " WHERE id = $1", row["id"], repr(exc)[:500])
                        break
                    faults.point("outbox.after_publish")  # published, not marked sent
                    sent.append(row["id"])
                    metrics.OUTBOX_PUBLISHED.labels(row["routing_key"]).inc()
                if sent:
                    await conn.execute("UPDATE outbox SET state = 'sent', published_at = clock_timestamp(),"
                                       " attempts = attempts + 1 WHERE id = ANY($1::uuid[])", sent)
                await self._observe(conn)
        if failure is not None:
            raise failure
        return len(sent) + returned

    async def _returned(self, conn: asyncpg.Connection, row: asyncpg.Record, exc: Exception) -> None:
        metrics.OUTBOX_FAILURES.inc()
        metrics.OUTBOX_RETURNED.labels(row["routing_key"]).inc()
        times, error = row["returned"] + 1, repr(exc)[:500]
        if times < self.park_after:
            await conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, returned = $2, last_error = $3,"
                " retry_at = clock_timestamp() + make_interval(secs => $4) WHERE id = $1",
                row["id"], times, error, retry_delay(times))
            return
        await conn.execute("UPDATE outbox SET attempts = attempts + 1, returned = $2, last_error = $3,"
                           " state = 'parked', parked_at = clock_timestamp(), retry_at = NULL WHERE id = $1",
                           row["id"], times, error)
        log.error("outbox event parked: no queue takes it; replay or discard it (browserfleet outbox)",
                  extra={"message_id": str(row["id"]), "routing_key": row["routing_key"], "returned": times})

    async def _observe(self, conn: asyncpg.Connection) -> None:
        row = await conn.fetchrow("SELECT count(*) AS n, min(created_at) AS oldest FROM outbox WHERE state = 'pending'")
        metrics.OUTBOX_PENDING.set(row["n"])
        lag = (datetime.now(timezone.utc) - row["oldest"]).total_seconds() if row["oldest"] else 0.0
        metrics.OUTBOX_LAG.set(lag)
        metrics.OUTBOX_PARKED.set(await conn.fetchval("SELECT count(*) FROM outbox WHERE state = 'parked'"))


# --- parked rows (the operator's) and retention --------------------------------------------------

async def parked(conn: asyncpg.Connection, *, limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, routing_key, created_at, parked_at, attempts, last_error FROM outbox"
        " WHERE state = 'parked' ORDER BY created_at LIMIT $1", limit)


async def replay_parked(conn: asyncpg.Connection, *, message_id: UUID | None = None) -> int:
    """Parked rows (all, or one) back in line, with a fresh allowance of returns; how many."""
    ids = await conn.fetch(
        "UPDATE outbox SET state = 'pending', returned = 0, retry_at = NULL, parked_at = NULL"
        " WHERE state = 'parked' AND ($1::uuid IS NULL OR id = $1) RETURNING id", message_id)
    if ids:
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return len(ids)


async def discard_parked(conn: asyncpg.Connection, *, message_id: UUID) -> bool:
    return await conn.execute("DELETE FROM outbox WHERE state = 'parked' AND id = $1", message_id) == "DELETE 1"


async def delete_sent(pool: asyncpg.Pool, *, older_than_s: float, batch: int = 1000) -> int:
    """Delete rows sent over `older_than_s` ago, in batches (short locks); how many."""
    deleted = 0
    while True:
        async with pool.acquire() as conn:
            status = await conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 'sent'"
                " AND published_at < clock_timestamp() - make_interval(secs => $1) LIMIT $2"
                " FOR UPDATE SKIP LOCKED)", float(older_than_s), batch)
        n = int(status.split()[-1])
        deleted += n
        if n < batch:
            return deleted


def router(pool: asyncpg.Pool, admin_token: str) -> APIRouter:
    routes = APIRouter(prefix="/v1/admin/outbox", tags=["admin"])

    @routes.get("/parked", responses=error_responses())
    async def list_parked_events(request: Request, limit: int = 100):
        require_admin(request, admin_token)
        async with pool.acquire() as conn:
            rows = await parked(conn, limit=limit)
        return {"data": [{**dict(r), "id": str(r["id"])} for r in rows]}

    @routes.post("/parked/replay", responses=error_responses(404))
    async def replay_parked_events(request: Request, id: UUID | None = None):
        """Every parked event back in line (or only `id`): published once a queue takes it."""
        require_admin(request, admin_token)
        async with pool.acquire() as conn:
            replayed = await replay_parked(conn, message_id=id)
        if id is not None and not replayed:
            raise APIError(404, "not_found", f"no parked event {id}")
        return {"replayed": replayed}

    @routes.delete("/parked/{message_id}", responses=error_responses(404))
    async def discard_parked_event(message_id: UUID, request: Request):
        """Drop a parked event for good (nobody is meant to receive it)."""
        require_admin(request, admin_token)
        async with pool.acquire() as conn:
            if not await discard_parked(conn, message_id=message_id):
                raise APIError(404, "not_found", f"no parked event {message_id}")
        return {"discarded": str(message_id)}

    return routes
