"""What both pools share: who this replica is, its background tasks, lease statistics, and
the bookkeeping of a browser's end."""
import asyncio
import logging
import os
import socket
from collections import deque
from dataclasses import dataclass, field
from uuid import UUID

from services.warm_pool import domain, metrics
from services.warm_pool.ports import Row, UnitOfWork
from shared.messages import BrowserCrashed, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replica:
    """This warm_pool process, as its browsers' rows name it."""
    replica_id: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


class Background:
    """Tasks a pool starts and does not await; cancelled together at shut-down."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool task failed", exc_info=task.exception())

    async def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class LeaseStats:
    """The last 200 leases, warm or cold: the warm-hit ratio gauge."""

    def __init__(self) -> None:
        self.recent: deque[bool] = deque(maxlen=200)

    def record(self, warm: bool) -> None:
        self.recent.append(warm)
        metrics.LEASES.labels("warm" if warm else "cold").inc()
        warm_n = sum(self.recent)
        metrics.WARM_HIT_RATIO.set(domain.warm_hit_ratio(warm_n, len(self.recent) - warm_n))


async def mark_dead(uow: UnitOfWork, browser_id: UUID) -> Row | None:
    """The row as it was before (None if it was dead already)."""
    async with uow.begin() as tx:
        return await tx.repo.mark_dead(browser_id=browser_id)


async def mark_dead_and_report(uow: UnitOfWork, browser_id: UUID) -> None:
    """Dead; if it was serving a session, sessions hears that its browser is gone."""
    async with uow.begin() as tx:
        before = await tx.repo.mark_dead(browser_id=browser_id)
        if before is not None and before["state"] == "leased":
            await tx.publish(crashed(browser_id, before))


def crashed(browser_id: UUID, before: Row) -> BrowserCrashed:
    return BrowserCrashed(browser_id=browser_id, tenant_id=before["tenant_id"], session_id=before["session_id"],
                          detected_at=utcnow())
