"""Background loops: stored Stripe events are processed until done; meter reports are sent until
Stripe accepts them. Both work from tables, so a restart picks up where the last process stopped."""
import asyncio
import logging

import asyncpg

from services.billing import domain, handlers, metrics, repository
from services.billing.adapters.stripe import StripeAPI
from shared.db import transaction
from shared.plans import Plan

log = logging.getLogger(__name__)


async def _sleep_or_wake(wake: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(wake.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
    wake.clear()


class StripeEventWorker:
    def __init__(self, pool: asyncpg.Pool, *, plans: dict[str, Plan], interval: float, max_backoff: float):
        self.pool, self.plans, self.interval, self.max_backoff = pool, plans, interval, max_backoff
        self.wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    def submit(self, event_id: str) -> None:
        """Process a just-stored event now, off the request; the loop covers any failure."""
        task = asyncio.create_task(self.process(event_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def process(self, event_id: str) -> None:
        try:
            outcome = await handlers.process_stripe_event(self.pool, event_id, plans=self.plans,
                                                          max_backoff=self.max_backoff)
        except Exception:
            log.exception("stripe event processing error", extra={"event_id": event_id})
            return
        if outcome is None:
            return
        metrics.EVENTS_APPLIED.labels(outcome.type, "done" if outcome.done else "postponed").inc()
        if outcome.refused:
            metrics.EVENTS_REFUSED.labels(outcome.type).inc()
        if outcome.tenant_linked:
            self.wake.set()

    async def run_once(self) -> int:
        async with self.pool.acquire() as conn:
            ids = await repository.due_events(conn)
            metrics.EVENTS_PENDING.set(await conn.fetchval(
                "SELECT count(*) FROM stripe_events WHERE processed_at IS NULL"))
        for event_id in ids:
            await self.process(event_id)
        return len(ids)

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("stripe event retry loop error")
            await _sleep_or_wake(self.wake, self.interval)

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


class MeterReporter:
    def __init__(self, pool: asyncpg.Pool, api: StripeAPI, *, event_name: str, interval: float,
                 max_backoff: float, batch: int = 50):
        self.pool, self.api, self.event_name = pool, api, event_name
        self.interval, self.max_backoff, self.batch = interval, max_backoff, batch
        self.wake = asyncio.Event()

    async def run_once(self) -> int:
        """Send one batch; rows stay locked while sending so replicas never send the same one at once.
        A crash after Stripe accepted but before the mark re-sends; Stripe dedupes by identifier."""
        sent = 0
        async with transaction(self.pool) as conn:
            for row in await repository.claim_meter_reports(conn, limit=self.batch):
                if not row["stripe_customer_id"]:
                    await repository.postpone_meter_report(
                        conn, session_id=row["session_id"], error="no stripe customer yet",
                        delay_s=domain.backoff_seconds(row["attempts"], cap=self.max_backoff))
                    continue
                try:
                    await self.api.send_meter_event(
                        event_name=self.event_name, identifier=str(row["session_id"]),
                        customer=row["stripe_customer_id"], value=row["value"], timestamp=row["occurred_at"])
                except Exception as exc:
                    log.warning("meter event not sent, will retry",
                                extra={"session_id": str(row["session_id"]), "error": repr(exc)[:300]})
                    metrics.METER_SENT.labels("failed").inc()
                    await repository.postpone_meter_report(
                        conn, session_id=row["session_id"], error=repr(exc),
                        delay_s=domain.backoff_seconds(row["attempts"], cap=self.max_backoff))
                    continue
                await repository.mark_meter_sent(conn, session_id=row["session_id"])
                metrics.METER_SENT.labels("sent").inc()
                sent += 1
            metrics.METER_PENDING.set(await conn.fetchval("SELECT count(*) FROM meter_reports WHERE sent_at IS NULL"))
        return sent

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("meter reporter error")
            await _sleep_or_wake(self.wake, self.interval)
