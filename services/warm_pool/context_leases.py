"""LocalPool's context hosts (mode 'context'): they move launching → hosting → retiring → dead,
and while hosting hold up to CONTEXTS_PER_BROWSER BrowserContexts of one tenant's sessions, each a
row of `contexts` (creating → active → ending → ended). Only this replica places contexts in its
own hosts; a context whose session ended elsewhere is left 'ending' for this replica to dispose.
"""
import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import asyncpg

from services.warm_pool import domain, metrics
from services.warm_pool.domain import RATE_WINDOW_S
from services.warm_pool.pools import Replica, context_reply
from services.warm_pool.ports import ProcessBackend, Row, UnitOfWork
from services.warm_pool.refills import Refills
from services.warm_pool.settings import WarmPoolSettings
from shared import faults
from shared.messages import LeaseReply, LeaseRequest

log = logging.getLogger(__name__)


class ContextLeases:
    """Leasing, ending and recycling context hosts: mixed into LocalPool, whose backend, database,
    host cap and browser launches these use."""
    backend: ProcessBackend
    uow: UnitOfWork
    settings: WarmPoolSettings
    replica: Replica
    replica_id: str
    stopping: bool
    launch_seconds: float
    refills: Refills
    _launch: Callable[..., Awaitable[Row | None]]
    _reserve: Callable[..., Awaitable[UUID | None]]
    kill: Callable[[UUID], Awaitable[None]]
    request_refill: Callable[[UUID], None]

    def __init__(self) -> None:
        # Per tenant: one round of on-demand host launches at a time, the rounds done, the leases waiting.
        self.host_launches: dict[UUID, asyncio.Lock] = {}
        self.launch_rounds: dict[UUID, int] = {}
        self.context_waiting: dict[UUID, int] = {}
        self.host_memory: dict[UUID, int] = {}  # a context host's memory when it started
        self.ending: set[UUID] = set()  # sessions whose context is being disposed here

    def _context_query(self) -> dict:
        s = self.settings
        return {"replica_id": self.replica_id, "rate_window_s": RATE_WINDOW_S, "warm_window_s": s.context_warm_window_s,
                "recycle_after": s.context_recycle_after, "max_age_s": s.context_host_max_age_s}

    def context_target(self, c: Row) -> int:
        """Open context hosts to keep for the tenant (domain.context_hosts_target)."""
        baseline = self.settings.context_prewarm_hosts if c["prewarm"] > 0 and c["uses_contexts"] else 0
        spare = domain.context_spare_slots(lease_rate=c["recent_contexts"] / RATE_WINDOW_S,
                                           launch_seconds=self.launch_seconds)
        return domain.context_hosts_target(baseline=baseline, active=c["open_active"], spare=spare,
                                           per_browser=self.settings.contexts_per_browser,
                                           max_concurrent=c["max_concurrent"])

    async def _reconcile_contexts(self) -> None:
        """Dispose the contexts left 'ending' here, flag hosts whose memory grew too much, retire
        the empty hosts due for recycling and those beyond their tenant's target."""
        async with self.uow.connect() as tx:
            ending = await tx.repo.own_ending_contexts(replica_id=self.replica_id)
            hosts = await tx.repo.own_in_state(replica_id=self.replica_id, state="hosting")
        for session_id in ending:
            await self.end_context(session_id)
        growth = self.settings.context_recycle_memory_growth_mib * 2**20
        for browser_id in hosts:
            memory = self.backend.memory_bytes(browser_id)
            if memory is not None and memory - self.host_memory.setdefault(browser_id, memory) > growth:
                log.info("context host recycled for memory growth", extra={"browser_id": str(browser_id)})
                async with self.uow.connect() as tx:
                    await tx.repo.flag_recycle(browser_id=browser_id)
        q = self._context_query()
        async with self.uow.begin() as tx:
            done = await tx.repo.retire_done_hosts(replica_id=self.replica_id, recycle_after=q["recycle_after"],
                                                   max_age_s=q["max_age_s"])
            pools = await tx.repo.context_pools(**q)
        for c in pools:
            if c["status"] != "active":
                continue
            excess = domain.excess_context_hosts(target=self.context_target(c), open_hosts=c["open_hosts"],
                                                 launching=c["launching"], empty=c["empty_hosts"])
            if excess:
                async with self.uow.begin() as tx:
                    done += await tx.repo.retire_empty_hosts(tenant_id=c["tenant_id"], replica_id=self.replica_id,
                                                             count=excess)
        metrics.CONTEXT_HOSTS_RECYCLED.inc(len(done))
        await asyncio.gather(*(self.kill(b) for b in done))

    async def lease_context(self, req: LeaseRequest, *, tenant: Row) -> LeaseReply:
        """A slot in an open host (warm); else launch hosts and take a slot in one (cold). Launches
        of a tenant go one round at a time, each starting, at once, enough hosts for every lease
        waiting then; a lease that waited out another's round tries the new hosts first. Up to
        lease_wait_s at the host cap. A lease `ahead` takes an open host's room or nothing."""
        if req.ahead:
            reply = await self._open_context(req, warm=True)
            if reply is None:
                metrics.CONTEXT_LEASES.labels("no_capacity").inc()
            return reply or LeaseReply(ok=False, error="no_capacity")
        deadline = time.monotonic() + self.settings.lease_wait_s
        lock = self.host_launches.setdefault(req.tenant_id, asyncio.Lock())
        waiting = self.context_waiting
        warm = True
        waiting[req.tenant_id] = waiting.get(req.tenant_id, 0) + 1
        try:
            while not self.stopping:
                round_seen = self.launch_rounds.get(req.tenant_id, 0)
                reply = await self._open_context(req, warm=warm)
                if reply is not None:
                    return reply
                warm = False
                async with lock:
                    if self.launch_rounds.get(req.tenant_id, 0) != round_seen:
                        continue  # hosts started while this lease waited: try them
                    count = math.ceil(waiting[req.tenant_id] / self.settings.contexts_per_browser)
                    results = await asyncio.gather(*(self._launch_host(req) for _ in range(count)))
                    self.launch_rounds[req.tenant_id] = round_seen + 1
                if any(launched for launched, _ in results):
                    continue
                refused = next((r for _, r in results if r is not None), None)
                if refused is not None:
                    return refused
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.1)
        finally:
            waiting[req.tenant_id] -= 1
            if not waiting[req.tenant_id]:
                del waiting[req.tenant_id]
        metrics.CONTEXT_LEASES.labels("no_capacity").inc()
        return LeaseReply(ok=False, error="no_capacity")

    async def _launch_host(self, req: LeaseRequest) -> tuple[bool, LeaseReply | None]:
        """Start a context host for the tenant now: (started, the refusal to answer with if it
        failed); (False, None) at this host's cap."""
        browser_id = await self._reserve(req.tenant_id, mode="context")
        if browser_id is None:
            return False, None
        try:
            row = await self._launch(browser_id, "hosting", tenant_id=req.tenant_id, urgent=True)
        except domain.TenantRefused as exc:
            metrics.CONTEXT_LEASES.labels("no_capacity").inc()
            return False, LeaseReply(ok=False, error="no_capacity", message=str(exc))
        if row is None:
            metrics.CONTEXT_LEASES.labels("error").inc()
            return False, LeaseReply(ok=False, error="error")
        return True, None

    async def _open_context(self, req: LeaseRequest, *, warm: bool) -> LeaseReply | None:
        """A slot claimed in an open host and a context made in it; None if no host had room."""
        s = self.settings
        async with self.uow.connect() as tx:
            try:
                host = await tx.repo.claim_context(
                    tenant_id=req.tenant_id, replica_id=self.replica_id, session_id=req.session_id,
                    per_browser=s.contexts_per_browser, recycle_after=s.context_recycle_after,
                    max_age_s=s.context_host_max_age_s, warm=warm)
            except asyncpg.UniqueViolationError:  # the same request, twice at once
                return await context_reply(self.uow, req.session_id)
        if host is None:
            return None
        if host["contexts_served"] == 1:  # its first session: out of the idle scheduling class
            self.backend.prioritize(pid=host["pid"], host=host["host"])
        try:
            opened = await self.backend.open_context(host["id"], cdp_ws_url=host["cdp_ws_url"],
                                                     session_id=req.session_id, first_page=s.context_first_page)
        except Exception as exc:
            log.warning("creating a context failed", extra={"browser_id": str(host["id"]), "error": repr(exc)[:300]})
            async with self.uow.connect() as tx:
                await tx.repo.context_ended(session_id=req.session_id, failed=True)
            await self._retire_if_done(host["id"])
            metrics.CONTEXT_LEASES.labels("error").inc()
            return LeaseReply(ok=False, error="error")
        async with self.uow.connect() as tx:
            opened_ok = await tx.repo.context_opened(session_id=req.session_id, context_id=opened.context_id,
                                                     downloads_path=opened.downloads_path)
        faults.point("warm_pool.after_context_lease")  # the context made and recorded, not replied
        if not opened_ok:  # its session ended, or its host died, while it was being made
            await self._close_context(host["id"], host["cdp_ws_url"], opened.context_id, req.session_id)
            metrics.CONTEXT_LEASES.labels("error").inc()
            return LeaseReply(ok=False, error="error")
        metrics.CONTEXT_LEASES.labels("warm" if warm else "cold").inc()
        self.refills.leased(req.tenant_id)
        return LeaseReply(ok=True, browser_id=host["id"], cdp_ws_url=host["cdp_ws_url"], warm=warm,
                          context_id=opened.context_id, downloads_path=opened.downloads_path)

    async def end_context(self, session_id: UUID) -> None:
        async with self.uow.connect() as tx:
            ctx = await tx.repo.context_for_session(session_id=session_id)
        if (ctx is None or ctx["state"] != "ending" or ctx["replica_id"] != self.replica_id
                or session_id in self.ending):
            return
        self.ending.add(session_id)  # the session's end and a reconcile pass may both get here
        try:
            await self._close_context(ctx["browser_id"], ctx["cdp_ws_url"], ctx["context_id"], session_id)
        finally:
            self.ending.discard(session_id)
        self.request_refill(ctx["tenant_id"])

    async def _close_context(self, browser_id: UUID, cdp_ws_url: str, context_id: str | None,
                             session_id: UUID) -> None:
        """Dispose it, free its slot; a host left empty and due for recycling goes."""
        try:
            await self.backend.close_context(browser_id, cdp_ws_url=cdp_ws_url, context_id=context_id,
                                             session_id=session_id)
            failed = False
        except Exception as exc:  # a host that cannot dispose a context takes no more
            log.warning("disposing a context failed", extra={"browser_id": str(browser_id), "error": repr(exc)[:300]})
            failed = True
        async with self.uow.begin() as tx:
            await tx.repo.context_ended(session_id=session_id)
            if failed:
                await tx.repo.flag_recycle(browser_id=browser_id)
        await self._retire_if_done(browser_id)

    async def _retire_if_done(self, browser_id: UUID) -> None:
        async with self.uow.connect() as tx:
            done = await tx.repo.retire_done_hosts(replica_id=self.replica_id,
                                                   recycle_after=self.settings.context_recycle_after,
                                                   max_age_s=self.settings.context_host_max_age_s,
                                                   browser_id=browser_id)
        metrics.CONTEXT_HOSTS_RECYCLED.inc(len(done))
        await asyncio.gather(*(self.kill(b) for b in done))
