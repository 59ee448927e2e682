"""Background loops: stored Stripe events are processed until done; meter reports are sent until
Stripe accepts them. Both work from tables (through the handlers), so a restart picks up where the
last process stopped."""
import asyncio
import logging

from services.billing import handlers, metering
from services.billing.ports import StripeAPI, UnitOfWork
from shared.plans import Plan

log = logging.getLogger(__name__)


class StripeEventWorker:
    def __init__(self, uow: UnitOfWork, *, plans: dict[str, Plan], interval: float, max_backoff: float):
        self.uow, self.plans, self.interval, self.max_backoff = uow, plans, interval, max_backoff
        self.wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    def submit(self, event_id: str) -> None:
        """Process a just-stored event now, off the request; the loop covers any failure."""
        task = asyncio.create_task(self.process(event_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def process(self, event_id: str) -> None:
        try:
            outcome = await handlers.process_stripe_event(event_id, uow=self.uow, plans=self.plans,
                                                          max_backoff=self.max_backoff)
        except Exception:
            log.exception("stripe event processing error", extra={"event_id": event_id})
            return
        if outcome is not None and outcome.tenant_linked:
            self.wake.set()

    async def run_once(self) -> int:
        ids = await handlers.due_stripe_events(uow=self.uow)
        for event_id in ids:
            await self.process(event_id)
        return len(ids)

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


class MeterReporter:
    def __init__(self, uow: UnitOfWork, api: StripeAPI, *, event_name: str, interval: float,
                 max_backoff: float, batch: int = 50):
        self.uow, self.api, self.event_name = uow, api, event_name
        self.interval, self.max_backoff, self.batch = interval, max_backoff, batch
        self.wake = asyncio.Event()

    async def run_once(self) -> int:
        return await metering.send_meter_reports(uow=self.uow, api=self.api, event_name=self.event_name,
                                                 max_backoff=self.max_backoff, batch=self.batch)
