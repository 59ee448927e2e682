"""One function per command or message, given the pool's ports (`PoolPorts`).

The database is the coordinator: every browser is a row whose state moves
launching → idle → leased → retiring → dead (or launching → leased for on-demand launches).
A replica only starts and kills its own processes; others ask it to by setting a row to
'retiring', which its reconcile loop acts on.

With a cluster backend (kubernetes) the tenant's Deployment is the pool: there are no idle rows
and no refills; a lease claims one of its Ready pods and records it as a leased row, and every
replica may destroy or watch any browser, since all of them reach the same cluster.
"""
import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID, uuid4

import asyncpg

from services.warm_pool import domain, metrics, repository
from services.warm_pool.settings import WarmPoolSettings
from shared import faults
from shared import outbox
from shared.db import transaction
from shared.inbox import first_delivery
from shared.messages import (BrowserCrashed, LeaseReply, LeaseRequest, SessionCompleted, SessionStarted,
                             SubscriptionChanged, TenantProvisioned, utcnow)
from shared.plans import UnknownPlan, get_plan

log = logging.getLogger(__name__)
CONSUMER = "warm_pool"
RATE_WINDOW_S = 60.0
REFILL_DELAY_S = 0.02


class Launched(Protocol):
    pid: int
    port: int
    profile_dir: str
    cdp_ws_url: str


class Backend(Protocol):
    """Browsers as processes of this replica (local)."""
    cluster: bool  # False
    async def launch(self, browser_id: UUID, *, tenant_id: UUID, tenant_browsers: int,
                     urgent: bool = False) -> Launched: ...
    async def kill(self, browser_id: UUID) -> None: ...
    def exited(self) -> list[UUID]: ...
    async def close(self) -> None: ...
    def owner_alive(self, pid: int) -> bool: ...
    async def remove_stale(self, browser_id: UUID, *, pid: int | None, profile_dir: str | None) -> None: ...
    async def remove_orphans(self) -> list[UUID]: ...


class ClusterBackend(Protocol):
    """Browsers as pods of the tenant's Deployment (kubernetes)."""
    cluster: bool  # True
    async def claim(self, browser_id: UUID, *, namespace: str, session_id: UUID, wait_s: float) -> Launched | None: ...
    async def kill(self, browser_id: UUID) -> None: ...
    async def leased(self) -> dict[UUID, bool]: ...  # every leased browser → still alive and ready
    async def close(self) -> None: ...


@dataclass
class PoolPorts:
    db: asyncpg.Pool
    backend: Backend | ClusterBackend
    settings: WarmPoolSettings
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    stopping: bool = False
    launch_seconds: float = 1.0  # moving average, feeds pool sizing
    recent: deque = field(default_factory=lambda: deque(maxlen=200))
    tasks: set = field(default_factory=set)
    refilling: set = field(default_factory=set)
    refill_again: set = field(default_factory=set)

    def __post_init__(self):
        self.refill_slots = asyncio.Semaphore(self.settings.launch_concurrency)
        self.cap_lock = asyncio.Lock()

    @property
    def replica(self) -> str:
        return self.settings.replica_id

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool task failed", exc_info=task.exception())

    def request_refill(self, tenant_id: UUID) -> None:
        """Coalesced: at most one refill per tenant runs, and one more is queued behind it."""
        if tenant_id in self.refilling:
            self.refill_again.add(tenant_id)
            return
        self.refilling.add(tenant_id)
        self.spawn(self._refill_loop(tenant_id))

    async def _refill_loop(self, tenant_id: UUID) -> None:
        try:
            # Lets the lease reply go out first, and gathers a burst of leases into one pass.
            await asyncio.sleep(REFILL_DELAY_S)
            while True:
                self.refill_again.discard(tenant_id)
                await refill(tenant_id, ports=self)
                if tenant_id not in self.refill_again:
                    return
        finally:
            self.refilling.discard(tenant_id)

    def record_lease(self, warm: bool, row=None) -> None:
        if row is not None and not self.backend.cluster:
            self.backend.prioritize(pid=row["pid"], host=row["host"])
        self.recent.append(warm)
        metrics.LEASES.labels("warm" if warm else "cold").inc()
        metrics.WARM_HIT_RATIO.set(domain.warm_hit_ratio(sum(self.recent), len(self.recent) - sum(self.recent)))


# --- lease RPC -------------------------------------------------------------------------------

async def lease(req: LeaseRequest, *, ports: PoolPorts) -> LeaseReply:
    async with ports.db.acquire() as conn:
        # The common case in one round trip. Only an active tenant has idle browsers (a drain
        # retires them), and session_id is unique, so a retried request cannot take a second one.
        try:
            row = await repository.lease_idle(conn, tenant_id=req.tenant_id, session_id=req.session_id)
        except asyncpg.UniqueViolationError:
            row = None
        if row is not None:
            faults.point("warm_pool.after_lease")  # leased in the database, not replied
            ports.record_lease(True, row)
            ports.request_refill(req.tenant_id)
            return LeaseReply(ok=True, browser_id=row["id"], cdp_ws_url=row["cdp_ws_url"], warm=True)
        tenant = await repository.get_tenant(conn, tenant_id=req.tenant_id)
        if tenant is None or tenant["status"] != "active":
            metrics.LEASES.labels("unknown_tenant").inc()
            return LeaseReply(ok=False, error="unknown_tenant")
        row = await repository.leased_for_session(conn, session_id=req.session_id)
        if row is not None:  # a retried request: the same answer, never a second browser
            if row["state"] == "leased":
                return LeaseReply(ok=True, browser_id=row["id"], cdp_ws_url=row["cdp_ws_url"], warm=bool(row["warm"]))
            return LeaseReply(ok=False, error="error")
    if ports.backend.cluster:
        return await _lease_from_cluster(req, namespace=tenant["namespace"], ports=ports)
    return await _lease_cold(req, ports=ports)


async def _lease_from_cluster(req: LeaseRequest, *, namespace: str, ports: PoolPorts) -> LeaseReply:
    """Claim a Ready pod of the tenant's Deployment (waiting up to lease_wait_s for one)."""
    browser_id = uuid4()
    # The row comes first: a pod is never leased without one, so a replica dying mid-claim
    # leaves a 'launching' row that the reconciler retires (deleting the pod, if it got one).
    async with transaction(ports.db) as conn:
        await repository.insert_browser(conn, browser_id=browser_id, tenant_id=req.tenant_id, replica_id=ports.replica,
                                        owner_pid=ports.pid, host=ports.host, session_id=req.session_id, warm=True)
    try:
        claimed = await ports.backend.claim(browser_id, namespace=namespace, session_id=req.session_id,
                                            wait_s=ports.settings.lease_wait_s)
    except Exception as exc:
        log.warning("claiming a pod failed", extra={"tenant_id": str(req.tenant_id), "error": repr(exc)[:300]})
        await kill_browser(browser_id, ports=ports)
        metrics.LEASES.labels("error").inc()
        return LeaseReply(ok=False, error="error")
    if claimed is None:
        await _mark_dead(browser_id, ports=ports)
        metrics.LEASES.labels("no_capacity").inc()
        return LeaseReply(ok=False, error="no_capacity")
    async with transaction(ports.db) as conn:
        row = await repository.mark_ready(conn, browser_id=browser_id, state="leased", pid=claimed.pid,
                                          port=claimed.port, profile_dir=claimed.profile_dir,
                                          cdp_ws_url=claimed.cdp_ws_url)
    if row is None:  # the tenant was drained meanwhile
        await kill_browser(browser_id, ports=ports)
        return LeaseReply(ok=False, error="unknown_tenant")
    ports.record_lease(True)
    return LeaseReply(ok=True, browser_id=browser_id, cdp_ws_url=claimed.cdp_ws_url, warm=True)


async def _lease_cold(req: LeaseRequest, *, ports: PoolPorts) -> LeaseReply:
    """Launch on demand; at the host cap, wait a little for one of the tenant's refills to become
    idle or for capacity to free up, then answer no_capacity."""
    deadline = time.monotonic() + ports.settings.lease_wait_s
    while not ports.stopping:
        reply = await _launch_on_demand(req, ports=ports)
        if reply is not None:
            return reply
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
        async with ports.db.acquire() as conn:
            row = await repository.lease_idle(conn, tenant_id=req.tenant_id, session_id=req.session_id)
        if row is not None:
            ports.record_lease(True, row)
            ports.request_refill(req.tenant_id)
            return LeaseReply(ok=True, browser_id=row["id"], cdp_ws_url=row["cdp_ws_url"], warm=True)
    metrics.LEASES.labels("no_capacity").inc()
    return LeaseReply(ok=False, error="no_capacity")


async def _launch_on_demand(req: LeaseRequest, *, ports: PoolPorts) -> LeaseReply | None:
    """None when this host is at its cap with no idle browser of another tenant to make room."""
    browser_id, evicted = uuid4(), None
    async with ports.cap_lock:
        async with transaction(ports.db) as conn:
            if await repository.count_live(conn, replica_id=ports.replica) >= ports.settings.max_browsers:
                evicted = await repository.evict_one_idle(conn, replica_id=ports.replica, for_tenant=req.tenant_id)
                if evicted is None:
                    return None
            await repository.insert_browser(conn, browser_id=browser_id, tenant_id=req.tenant_id,
                                            replica_id=ports.replica, owner_pid=ports.pid, host=ports.host,
                                            session_id=req.session_id)
    if evicted is not None:
        await kill_browser(evicted, ports=ports)
    try:
        row = await _launch(browser_id, "leased", tenant_id=req.tenant_id, ports=ports)
    except domain.TenantRefused as exc:
        metrics.LEASES.labels("no_capacity").inc()
        return LeaseReply(ok=False, error="no_capacity", message=str(exc))
    if row is None:
        metrics.LEASES.labels("error").inc()
        return LeaseReply(ok=False, error="error")
    ports.record_lease(False, row)
    return LeaseReply(ok=True, browser_id=browser_id, cdp_ws_url=row["cdp_ws_url"], warm=False)


async def _launch(browser_id: UUID, state: str, *, tenant_id: UUID, ports: PoolPorts, urgent: bool = False):
    """Start the browser of a 'launching' row and move it to `state`; None if that failed,
    `domain.TenantRefused` if the backend will not serve the tenant here."""
    if ports.stopping:
        await _mark_dead(browser_id, ports=ports)
        return None
    started = time.perf_counter()
    async with ports.db.acquire() as conn:
        tenant = await repository.get_tenant(conn, tenant_id=tenant_id)
    browsers = (tenant["max_concurrent"] + tenant["prewarm"]) if tenant else 1
    try:
        launched = await ports.backend.launch(browser_id, tenant_id=tenant_id, tenant_browsers=browsers,
                                              urgent=urgent or state == "leased")
    except domain.TenantRefused:
        await _mark_dead(browser_id, ports=ports)
        raise
    except Exception as exc:
        log.warning("browser launch failed", extra={"browser_id": str(browser_id), "error": repr(exc)[:300]})
        await _mark_dead(browser_id, ports=ports)
        return None
    took = time.perf_counter() - started
    metrics.LAUNCH_SECONDS.observe(took)
    ports.launch_seconds = 0.8 * ports.launch_seconds + 0.2 * took
    async with transaction(ports.db) as conn:
        row = await repository.mark_ready(conn, browser_id=browser_id, state=state, pid=launched.pid,
                                          port=launched.port, profile_dir=launched.profile_dir,
                                          cdp_ws_url=launched.cdp_ws_url)
    if row is None:  # retired while it was starting
        await kill_browser(browser_id, ports=ports)
    return row


# --- pool maintenance ------------------------------------------------------------------------

async def refill(tenant_id: UUID, *, ports: PoolPorts) -> None:
    """Start browsers until the tenant's idle + launching count reaches its target (this host's cap
    permitting). Launches run in the background, at most `launch_concurrency` at a time.
    A cluster's pool is its Deployment, kept at size by the HPA: nothing to do here."""
    if ports.stopping or ports.backend.cluster:
        return
    new: list[UUID] = []
    # Lock order everywhere: cap_lock, then a connection, then the tenant's advisory lock.
    async with ports.cap_lock, transaction(ports.db) as conn:
        await repository.lock_tenant(conn, tenant_id=tenant_id)
        pools = await repository.tenant_pools(conn, rate_window_s=RATE_WINDOW_S, tenant_id=tenant_id)
        if not pools or pools[0]["status"] != "active":
            return
        p = pools[0]
        # Refills leave room for on-demand launches: waiting sessions come first.
        reserve = min(ports.settings.launch_concurrency, ports.settings.max_browsers // 4)
        free = ports.settings.max_browsers - reserve - await repository.count_live(conn, replica_id=ports.replica)
        target = target_for(p, ports=ports)
        urgent = domain.refill_is_urgent(target=target, idle=p["idle"])
        for _ in range(domain.launches_needed(target=target, idle=p["idle"], launching=p["launching"],
                                              host_free=free)):
            new.append(uuid4())
            await repository.insert_browser(conn, browser_id=new[-1], tenant_id=tenant_id,
                                            replica_id=ports.replica, owner_pid=ports.pid, host=ports.host)
    for browser_id in new:
        ports.spawn(_launch_idle(browser_id, tenant_id=tenant_id, urgent=urgent, ports=ports))


async def _launch_idle(browser_id: UUID, *, tenant_id: UUID, urgent: bool, ports: PoolPorts) -> None:
    async with ports.refill_slots:
        with contextlib.suppress(domain.TenantRefused):  # logged by the backend; the tenant's creates say why
            await _launch(browser_id, "idle", tenant_id=tenant_id, urgent=urgent, ports=ports)


def target_for(pool_row, *, ports: PoolPorts) -> int:
    return domain.pool_target(prewarm=pool_row["prewarm"], max_concurrent=pool_row["max_concurrent"],
                              lease_rate=pool_row["recent_leases"] / RATE_WINDOW_S,
                              launch_seconds=ports.launch_seconds,
                              launch_slots=ports.settings.launch_concurrency)


async def kill_browser(browser_id: UUID, *, ports: PoolPorts) -> None:
    await ports.backend.kill(browser_id)
    await _mark_dead(browser_id, ports=ports)


async def _mark_dead(browser_id: UUID, *, ports: PoolPorts):
    async with transaction(ports.db) as conn:
        return await repository.mark_dead(conn, browser_id=browser_id)


def _mine(row, *, ports: PoolPorts) -> bool:
    """May this replica destroy the browser? Its own processes; any pod of the cluster."""
    return ports.backend.cluster or row["replica_id"] == ports.replica


async def _after_retire(rows, *, ports: PoolPorts) -> None:
    """Kill the retired browsers this replica may kill (the others' owners do it), then refill."""
    await asyncio.gather(*(kill_browser(r["id"], ports=ports) for r in rows if _mine(r, ports=ports)))
    for tenant_id in {r["tenant_id"] for r in rows}:
        ports.request_refill(tenant_id)


async def check_crashes(*, ports: PoolPorts) -> None:
    """Browsers whose process died unasked: dead; a leased one is reported; the pool refills."""
    for browser_id in await _died(ports=ports):
        await ports.backend.kill(browser_id)  # reap the group, remove the profile
        async with transaction(ports.db) as conn:
            before = await repository.mark_dead(conn, browser_id=browser_id)
            if before is None or before["state"] == "retiring":
                continue
            metrics.CRASHES.labels(before["state"]).inc()
            log.warning("browser died", extra={"browser_id": str(browser_id), "state": before["state"]})
            if before["state"] == "leased":
                await outbox.add(conn, BrowserCrashed(browser_id=browser_id, tenant_id=before["tenant_id"],
                                                      session_id=before["session_id"], detected_at=utcnow()))
        ports.request_refill(before["tenant_id"])


async def _died(*, ports: PoolPorts) -> list[UUID]:
    if not ports.backend.cluster:
        return ports.backend.exited()
    # Rows before pods: a pod deleted after its row was read had its row retired first (which
    # mark_dead then sees), so only pods gone or failing unasked count as crashes.
    async with ports.db.acquire() as conn:
        leased = await repository.ids_in_states(conn, states=["leased"])
    if not leased:
        return []
    alive = await ports.backend.leased()
    return [b for b in leased if not alive.get(b, False)]


async def reconcile(*, ports: PoolPorts) -> None:
    """One pass: reclaim unconfirmed leases, kill this replica's retired browsers, resize pools."""
    async with transaction(ports.db) as conn:
        await repository.reclaim_unconfirmed(conn, timeout_s=ports.settings.lease_confirm_timeout_s)
        mine = None if ports.backend.cluster else ports.replica
        retiring = await repository.own_in_state(conn, replica_id=mine, state="retiring")
        # A launch that never finished its bookkeeping (its task failed) must not leak a process.
        retiring += await repository.own_in_state(conn, replica_id=mine, state="launching",
                                                  older_than_s=ports.settings.launch_timeout_s + 30)
        pools = await repository.tenant_pools(conn, rate_window_s=RATE_WINDOW_S)
    await asyncio.gather(*(kill_browser(b, ports=ports) for b in retiring))
    for p in pools:
        if p["status"] != "active" or ports.backend.cluster:
            continue
        excess = domain.excess_idle(target=target_for(p, ports=ports), idle=p["idle"], launching=p["launching"])
        if excess:
            async with transaction(ports.db) as conn:
                shrink = await repository.retire_idle(conn, tenant_id=p["tenant_id"], replica_id=ports.replica,
                                                      count=excess)
            await asyncio.gather(*(kill_browser(b, ports=ports) for b in shrink))
        else:
            ports.request_refill(p["tenant_id"])
    async with ports.db.acquire() as conn:
        counts = await repository.own_counts(conn, replica_id=ports.replica)
    metrics.IDLE.set(counts.get("idle", 0))
    metrics.LEASED.set(counts.get("leased", 0))
    metrics.LAUNCHING.set(counts.get("launching", 0))


async def start_up(*, ports: PoolPorts) -> None:
    """Remove what a crashed predecessor on this host left: its browsers, their rows, their dirs."""
    if ports.backend.cluster:
        return await _sweep_cluster(ports=ports)
    async with ports.db.acquire() as conn:
        stale = await repository.stale_on_host(conn, host=ports.host, replica_id=ports.replica)
    for row in stale:
        if ports.backend.owner_alive(row["owner_pid"]):
            continue  # a sibling replica on this host
        await ports.backend.remove_stale(row["id"], pid=row["pid"], profile_dir=row["profile_dir"])
        await _dead_and_reported(row["id"], ports=ports)
    removed = await ports.backend.remove_orphans()
    if stale or removed:
        log.info("removed browsers left by a previous run", extra={"rows": len(stale), "dirs": len(removed)})


async def _sweep_cluster(*, ports: PoolPorts) -> None:
    """Delete leased pods whose browser is no longer leased (or being leased) in the database.
    Pods before rows: a row is written before its pod is claimed, so a pod listed here that
    some replica is claiming right now already has its row."""
    pods = await ports.backend.leased()
    async with ports.db.acquire() as conn:
        live = await repository.ids_in_states(conn, states=["launching", "leased"])
    orphans = [b for b in pods if b not in live]
    await asyncio.gather(*(ports.backend.kill(b) for b in orphans))
    if orphans:
        log.info("deleted leased pods without a lease", extra={"count": len(orphans)})


async def _dead_and_reported(browser_id: UUID, *, ports: PoolPorts) -> None:
    async with transaction(ports.db) as conn:
        before = await repository.mark_dead(conn, browser_id=browser_id)
        if before is not None and before["state"] == "leased":
            await outbox.add(conn, BrowserCrashed(browser_id=browser_id, tenant_id=before["tenant_id"],
                                                  session_id=before["session_id"], detected_at=utcnow()))


async def shut_down(*, ports: PoolPorts) -> None:
    """Kill every browser this replica started; sessions on them are told their browser is gone."""
    ports.stopping = True
    for task in list(ports.tasks):
        task.cancel()
    await asyncio.gather(*ports.tasks, return_exceptions=True)
    if ports.backend.cluster:  # the pods outlive this replica; the others watch and end them
        await ports.backend.close()
        return
    log.info("killing this replica's browsers")
    await ports.backend.close()
    async with ports.db.acquire() as conn:
        rows = await conn.fetch("SELECT id FROM browsers WHERE replica_id = $1 AND state <> 'dead'", ports.replica)
    for row in rows:
        await _dead_and_reported(row["id"], ports=ports)
    log.info("browsers killed", extra={"count": len(rows)})


# --- messages --------------------------------------------------------------------------------

async def tenant_provisioned(event: TenantProvisioned, *, ports: PoolPorts) -> None:
    async with transaction(ports.db) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        await repository.upsert_tenant(conn, tenant_id=event.tenant_id, plan=event.plan,
                                       prewarm=event.limits.prewarm_browsers,
                                       max_concurrent=event.limits.max_concurrent_sessions, status="active",
                                       namespace=event.namespace)
    ports.request_refill(event.tenant_id)


async def session_started(event: SessionStarted, *, ports: PoolPorts) -> None:
    async with transaction(ports.db) as conn:
        if await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            await repository.confirm(conn, browser_id=event.browser_id, session_id=event.session_id)


async def session_completed(event: SessionCompleted, *, ports: PoolPorts) -> None:
    async with transaction(ports.db) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        rows = await repository.retire_session(conn, session_id=event.session_id, browser_id=event.browser_id)
    await _after_retire(rows, ports=ports)


async def subscription_changed(event: SubscriptionChanged, *, ports: PoolPorts) -> None:
    rows = []
    async with transaction(ports.db) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        await repository.lock_tenant(conn, tenant_id=event.tenant_id)  # no refill slips past a drain
        tenant = await repository.get_tenant(conn, tenant_id=event.tenant_id)
        if tenant is None:
            return
        if event.status == "canceled":
            await repository.set_tenant_status(conn, tenant_id=event.tenant_id, status="draining")
            # On a cluster the leased pods go too: nothing of a canceled tenant stays leased.
            rows = await repository.retire_tenant(conn, tenant_id=event.tenant_id,
                                                  with_leased=ports.backend.cluster)
        else:
            limits = event.limits or _plan_limits(event.plan, ports=ports)
            await repository.upsert_tenant(
                conn, tenant_id=event.tenant_id, plan=event.plan,
                prewarm=limits.prewarm_browsers if limits else tenant["prewarm"],
                max_concurrent=limits.max_concurrent_sessions if limits else tenant["max_concurrent"],
                status="active")
    await asyncio.gather(*(kill_browser(r["id"], ports=ports) for r in rows if _mine(r, ports=ports)))
    if event.status != "canceled":
        ports.request_refill(event.tenant_id)


def _plan_limits(plan: str, *, ports: PoolPorts):
    try:
        return get_plan(ports.settings.plans_file, plan).limits
    except UnknownPlan:
        return None
