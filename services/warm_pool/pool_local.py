"""LocalPool: browsers as Chromium processes of this replica, with idle ones kept warm.

A browser row moves launching → idle → leased → retiring → dead (launching → leased for an
on-demand launch). A replica only starts and kills its own processes; others ask it to by
setting a row to 'retiring', which its reconcile acts on.

Context hosts (leasing BrowserContexts in them, recycling them) are in context_leases.py.
"""
import asyncio
import contextlib
import logging
import time
from uuid import UUID, uuid4

import asyncpg

from services.warm_pool import domain, metrics
from services.warm_pool.context_leases import ContextLeases
from services.warm_pool.domain import RATE_WINDOW_S
from services.warm_pool.pools import Background, LeaseStats, Replica, mark_dead, mark_dead_and_report
from services.warm_pool.ports import ProcessBackend, Row, UnitOfWork
from services.warm_pool.refills import Clock, MonotonicClock, Refills
from services.warm_pool.settings import WarmPoolSettings
from shared import faults
from shared.messages import LeaseReply, LeaseRequest

log = logging.getLogger(__name__)


class LocalPool(ContextLeases):
    retires_leased_on_cancel = False  # sessions ends a canceled tenant's sessions, which retires them
    launches_with_directory = True  # a profile's user-data directory goes into a browser launched for it

    def __init__(self, backend: ProcessBackend, uow: UnitOfWork, settings: WarmPoolSettings,
                 replica: Replica | None = None, clock: Clock | None = None):
        self.backend, self.uow, self.settings = backend, uow, settings
        self.replica = replica or Replica(settings.replica_id)
        self.replica_id = self.replica.replica_id
        self.stopping = False
        self.launch_seconds = 1.0  # moving average, feeds pool sizing
        self.stats = LeaseStats()
        self.background = Background()
        self.refills = Refills(self.refill, self.background, clock or MonotonicClock())
        self.refill_slots = asyncio.Semaphore(settings.launch_concurrency)
        # Lock order everywhere: cap_lock, then a connection, then the tenant's advisory lock.
        self.cap_lock = asyncio.Lock()
        super().__init__()

    def request_refill(self, tenant_id: UUID) -> None:
        self.refills.request(tenant_id)

    def may_destroy(self, row: Row) -> bool:
        return row["replica_id"] == self.replica_id

    def _leased(self, warm: bool, row: Row) -> None:
        self.backend.prioritize(pid=row["pid"], host=row["host"])
        self.stats.record(warm)

    # --- lease -----------------------------------------------------------------------------

    async def take_idle(self, req: LeaseRequest) -> LeaseReply | None:
        # Only an active tenant has idle browsers (a drain retires them), and session_id is
        # unique, so a retried request cannot take a second one.
        async with self.uow.connect() as tx:
            try:
                row = await tx.repo.lease_idle(tenant_id=req.tenant_id, session_id=req.session_id)
            except asyncpg.UniqueViolationError:
                return None
        if row is None:
            return None
        faults.point("warm_pool.after_lease")  # leased in the database, not replied
        self._leased(True, row)
        self.refills.leased(req.tenant_id)
        return await self.with_downloads(req, LeaseReply(ok=True, browser_id=row["id"], cdp_ws_url=row["cdp_ws_url"],
                                                          warm=True))

    async def lease_new(self, req: LeaseRequest, *, tenant: Row, directory: bytes | None = None) -> LeaseReply:
        """Launch on demand; at the host cap, wait a little for one of the tenant's refills to become
        idle or for capacity to free up, then answer no_capacity. `directory`: a profile's packed
        user-data directory to launch on (no idle browser will do then)."""
        deadline = time.monotonic() + self.settings.lease_wait_s
        while not self.stopping:
            reply = await self._launch_on_demand(req, directory=directory)
            if reply is not None:
                return reply
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
            if directory is not None:
                continue
            async with self.uow.connect() as tx:
                row = await tx.repo.lease_idle(tenant_id=req.tenant_id, session_id=req.session_id)
            if row is not None:
                self._leased(True, row)
                self.refills.leased(req.tenant_id)
                return await self.with_downloads(req, LeaseReply(ok=True, browser_id=row["id"],
                                                                  cdp_ws_url=row["cdp_ws_url"], warm=True))
        metrics.LEASES.labels("no_capacity").inc()
        return LeaseReply(ok=False, error="no_capacity")

    async def _reserve(self, tenant_id: UUID, **row) -> UUID | None:
        """A new browser row of this replica's for the tenant, under the host's cap: an idle
        browser of another tenant is evicted (and killed) to make room; None if there is none."""
        browser_id, evicted = uuid4(), None
        async with self.cap_lock:
            async with self.uow.begin() as tx:
                if await tx.repo.count_live(replica_id=self.replica_id) >= self.settings.max_browsers:
                    evicted = await tx.repo.evict_one_idle(replica_id=self.replica_id, for_tenant=tenant_id)
                    if evicted is None:
                        return None
                await tx.repo.insert_browser(browser_id=browser_id, tenant_id=tenant_id, replica_id=self.replica_id,
                                             owner_pid=self.replica.pid, host=self.replica.host, **row)
        if evicted is not None:
            await self.kill(evicted)
        return browser_id

    async def _launch_on_demand(self, req: LeaseRequest, *, directory: bytes | None = None) -> LeaseReply | None:
        """None when this host is at its cap with no idle browser of another tenant to make room."""
        browser_id = await self._reserve(req.tenant_id, session_id=req.session_id)
        if browser_id is None:
            return None
        try:
            row = await self._launch(browser_id, "leased", tenant_id=req.tenant_id, directory=directory)
        except domain.TenantRefused as exc:
            metrics.LEASES.labels("no_capacity").inc()
            return LeaseReply(ok=False, error="no_capacity", message=str(exc))
        if row is None:
            metrics.LEASES.labels("error").inc()
            return LeaseReply(ok=False, error="error")
        self._leased(False, row)
        return await self.with_downloads(req, LeaseReply(ok=True, browser_id=browser_id, cdp_ws_url=row["cdp_ws_url"],
                                                          warm=False))

    async def with_downloads(self, req: LeaseRequest, reply: LeaseReply) -> LeaseReply:
        """The browser downloads into a directory of its session's (kept when it ends); the
        reply says where, so the relay keeps a client's own download settings pointed there."""
        try:
            path = await self.backend.browser_downloads(reply.browser_id, cdp_ws_url=reply.cdp_ws_url,
                                                        session_id=req.session_id)
        except Exception as exc:  # the browser is gone: the session will hear of it
            log.warning("setting the downloads directory failed", extra={"browser_id": str(reply.browser_id),
                                                                         "error": repr(exc)[:300]})
            return reply
        return reply.model_copy(update={"downloads_path": path})

    async def _launch(self, browser_id: UUID, state: str, *, tenant_id: UUID, urgent: bool = False,
                      directory: bytes | None = None) -> Row | None:
        """Start the browser of a 'launching' row and move it to `state`; None if that failed,
        `domain.TenantRefused` if the backend will not serve the tenant here."""
        if self.stopping:
            await mark_dead(self.uow, browser_id)
            return None
        started = time.perf_counter()
        async with self.uow.connect() as tx:
            tenant = await tx.repo.get_tenant(tenant_id=tenant_id)
        browsers = (tenant["max_concurrent"] + tenant["prewarm"]) if tenant else 1
        try:
            launched = await self.backend.launch(browser_id, tenant_id=tenant_id, tenant_browsers=browsers,
                                                 urgent=urgent or state == "leased",
                                                 **({"directory": directory} if directory is not None else {}))
        except domain.TenantRefused:
            await mark_dead(self.uow, browser_id)
            raise
        except Exception as exc:
            log.warning("browser launch failed", extra={"browser_id": str(browser_id), "error": repr(exc)[:300]})
            await mark_dead(self.uow, browser_id)
            return None
        took = time.perf_counter() - started
        metrics.LAUNCH_SECONDS.observe(took)
        self.launch_seconds = 0.8 * self.launch_seconds + 0.2 * took
        async with self.uow.begin() as tx:
            row = await tx.repo.mark_ready(browser_id=browser_id, state=state, pid=launched.pid,
                                           port=launched.port, profile_dir=launched.profile_dir,
                                           cdp_ws_url=launched.cdp_ws_url)
        if row is None:  # retired while it was starting
            await self.kill(browser_id)
        elif state == "hosting":
            memory = self.backend.memory_bytes(browser_id)
            if memory is not None:
                self.host_memory[browser_id] = memory
        return row

    # --- pool maintenance ------------------------------------------------------------------

    def target_for(self, pool_row: Row) -> int:
        return domain.pool_target(prewarm=pool_row["prewarm"], max_concurrent=pool_row["max_concurrent"],
                                  lease_rate=pool_row["recent_leases"] / RATE_WINDOW_S,
                                  launch_seconds=self.launch_seconds,
                                  launch_slots=self.settings.launch_concurrency, hold_s=self.settings.refill_hold_s)

    async def refill(self, tenant_id: UUID, since_lease_s: float | None = None) -> float:
        """Start browsers until the tenant's idle + launching count reaches its target (this host's cap
        permitting). Launches run in the background, at most `launch_concurrency` at a time. Those
        not urgent wait until REFILL_HOLD_S after the oldest lease they refill for (`since_lease_s`
        ago): how much longer is returned (0: nothing held back)."""
        if self.stopping:
            return 0.0
        new: list[tuple[UUID, str, bool]] = []

        def hold(urgent: bool, wanted: int) -> float:
            return domain.refill_hold_s(urgent=urgent, since_lease_s=since_lease_s,
                                        hold_s=self.settings.refill_hold_s) if wanted else 0.0

        async with self.cap_lock, self.uow.begin() as tx:
            await tx.repo.lock_tenant(tenant_id=tenant_id)
            pools = await tx.repo.tenant_pools(rate_window_s=RATE_WINDOW_S, tenant_id=tenant_id)
            if not pools or pools[0]["status"] != "active":
                return 0.0
            p = pools[0]
            # Refills leave room for on-demand launches: waiting sessions come first.
            reserve = min(self.settings.launch_concurrency, self.settings.max_browsers // 4)
            free = self.settings.max_browsers - reserve - await tx.repo.count_live(replica_id=self.replica_id)
            target = self.target_for(p)
            urgent = domain.refill_is_urgent(target=target, idle=p["idle"])
            wanted = domain.launches_needed(target=target, idle=p["idle"], launching=p["launching"], host_free=free)
            held = hold(urgent, wanted)
            for _ in range(0 if held else wanted):
                new.append((uuid4(), "idle", urgent))
                await tx.repo.insert_browser(browser_id=new[-1][0], tenant_id=tenant_id, replica_id=self.replica_id,
                                             owner_pid=self.replica.pid, host=self.replica.host)
            (c,) = await tx.repo.context_pools(tenant_id=tenant_id, **self._context_query())
            host_target = self.context_target(c)
            hosts = domain.context_launches_needed(target=host_target, open_hosts=c["open_hosts"],
                                                   launching=c["launching"], host_free=free - wanted)
            # A host launches at normal priority when no open one has room left for the spare slots.
            host_urgent = c["open_hosts"] < host_target - 1 or c["open_active"] > 0
            hosts_held = hold(host_urgent, hosts)
            for _ in range(0 if hosts_held else hosts):
                new.append((uuid4(), "hosting", host_urgent))
                await tx.repo.insert_browser(browser_id=new[-1][0], tenant_id=tenant_id, replica_id=self.replica_id,
                                             owner_pid=self.replica.pid, host=self.replica.host, mode="context")
        for browser_id, state, launch_urgent in new:
            self.background.spawn(self._launch_idle(browser_id, state, tenant_id=tenant_id, urgent=launch_urgent))
        return max(held, hosts_held)

    async def _launch_idle(self, browser_id: UUID, state: str, *, tenant_id: UUID, urgent: bool) -> None:
        async with self.refill_slots:
            with contextlib.suppress(domain.TenantRefused):  # logged by the backend; the tenant's creates say why
                await self._launch(browser_id, state, tenant_id=tenant_id, urgent=urgent)

    async def close_and_pack(self, browser_id: UUID, *, cdp_ws_url: str, max_bytes: int) -> bytes:
        """Close the browser as a user would (Chromium writes out its cookies and storage), then
        its user-data directory packed (profile_archive.pack); the caller kills it afterwards."""
        return await self.backend.close_and_pack(browser_id, cdp_ws_url=cdp_ws_url, max_bytes=max_bytes)

    async def kill(self, browser_id: UUID) -> None:
        self.host_memory.pop(browser_id, None)
        await self.backend.kill(browser_id)
        await mark_dead(self.uow, browser_id)

    async def destroy(self, browser_id: UUID) -> None:
        self.host_memory.pop(browser_id, None)
        await self.backend.kill(browser_id)  # reaps the group, removes the profile

    async def crashed(self) -> list[UUID]:
        return self.backend.exited()

    async def reconcile(self) -> None:
        async with self.uow.begin() as tx:
            retiring = await tx.repo.own_in_state(replica_id=self.replica_id, state="retiring")
            # A launch that never finished its bookkeeping (its task failed) must not leak a process.
            retiring += await tx.repo.own_in_state(replica_id=self.replica_id, state="launching",
                                                   older_than_s=self.settings.launch_timeout_s + 30)
            pools = await tx.repo.tenant_pools(rate_window_s=RATE_WINDOW_S)
        await asyncio.gather(*(self.kill(b) for b in retiring))
        for p in pools:
            if p["status"] != "active":
                continue
            excess = domain.excess_idle(target=self.target_for(p), idle=p["idle"], launching=p["launching"])
            if excess:
                async with self.uow.begin() as tx:
                    shrink = await tx.repo.retire_idle(tenant_id=p["tenant_id"], replica_id=self.replica_id,
                                                       count=excess)
                await asyncio.gather(*(self.kill(b) for b in shrink))
            else:
                self.request_refill(p["tenant_id"])
        await self._reconcile_contexts()


    async def start_up(self) -> None:
        """Remove what a crashed predecessor on this host left: its browsers, their rows, their dirs."""
        async with self.uow.connect() as tx:
            stale = await tx.repo.stale_on_host(host=self.replica.host, replica_id=self.replica_id)
        for row in stale:
            if self.backend.owner_alive(row["owner_pid"]):
                continue  # a sibling replica on this host
            await self.backend.remove_stale(row["id"], pid=row["pid"], profile_dir=row["profile_dir"])
            await mark_dead_and_report(self.uow, row["id"])
        removed = await self.backend.remove_orphans()
        if stale or removed:
            log.info("removed browsers left by a previous run", extra={"rows": len(stale), "dirs": len(removed)})

    async def shut_down(self) -> None:
        """Kill every browser this replica started; sessions on them are told their browser is gone."""
        self.stopping = True
        await self.background.cancel_all()
        log.info("killing this replica's browsers")
        await self.backend.close()
        async with self.uow.connect() as tx:
            ids = await tx.repo.live_on_replica(replica_id=self.replica_id)
        for browser_id in ids:
            await mark_dead_and_report(self.uow, browser_id)
        log.info("browsers killed", extra={"count": len(ids)})
