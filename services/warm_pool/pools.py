"""What both pools share: who this replica is, its background tasks, lease statistics, and
the bookkeeping of a browser's end."""
import asyncio
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from uuid import UUID

from services.warm_pool import domain, metrics
from services.warm_pool.ports import Row, Tx, UnitOfWork
from shared.messages import BrowserCrashed, LeaseReply, utcnow

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
    """Dead; if it was serving sessions, sessions hears that their browser is gone."""
    async with uow.begin() as tx:
        before = await tx.repo.mark_dead(browser_id=browser_id)
        if before is not None:
            await report_gone(tx, browser_id, before)


async def report_gone(tx: Tx, browser_id: UUID, before: Row) -> int:
    """One browser_crashed per session the browser served: a leased browser's session, or each
    context session a host held (their contexts end with it). How many were reported."""
    if before["state"] == "leased":
        await tx.publish(crashed(browser_id, before))
        return 1
    if before["state"] != "hosting":
        return 0
    sessions = await tx.repo.crash_contexts(browser_id=browser_id)
    for session_id in sessions:
        await tx.publish(crashed(browser_id, {**before, "session_id": session_id}))
    return len(sessions)


async def context_reply(uow: UnitOfWork, session_id: UUID, *, wait_s: float = 10) -> LeaseReply | None:
    """The answer already given (or being given) to this session's context lease; None if it has
    none. A lease still creating its context is waited for, so a retry gets the same answer."""
    deadline = time.monotonic() + wait_s
    while True:
        async with uow.connect() as tx:
            row = await tx.repo.context_for_session(session_id=session_id)
        if row is None:
            return None
        if row["state"] == "active":
            return LeaseReply(ok=True, browser_id=row["browser_id"], cdp_ws_url=row["cdp_ws_url"],
                              warm=bool(row["warm"]), context_id=row["context_id"],
                              downloads_path=row["downloads_path"])
        if row["state"] != "creating" or time.monotonic() >= deadline:
            return LeaseReply(ok=False, error="error")
        await asyncio.sleep(0.05)


def crashed(browser_id: UUID, before: Row) -> BrowserCrashed:
    return BrowserCrashed(browser_id=browser_id, tenant_id=before["tenant_id"], session_id=before["session_id"],
                          detected_at=utcnow())
