"""ClusterPool: the tenant's Deployment (kubernetes) is the pool.

There are no idle rows and no refills (the Deployment is kept at size by its HPA): a lease
claims one of its Ready pods and records it as a leased row. Every replica may destroy or
watch any browser, since all of them reach the same cluster.
"""
import asyncio
import logging
from uuid import UUID, uuid4

from services.warm_pool import metrics
from services.warm_pool.pools import LeaseStats, Replica, mark_dead
from services.warm_pool.ports import ClusterBackend, Row, UnitOfWork
from services.warm_pool.settings import WarmPoolSettings
from shared.messages import LeaseReply, LeaseRequest

log = logging.getLogger(__name__)


class ClusterPool:
    retires_leased_on_cancel = True  # nothing of a canceled tenant stays leased
    # Profiles reach pods as storage state over CDP only (cookies, local storage, IndexedDB): a
    # pod's user-data directory is the pod's own, not unpacked from an archive (not yet).
    launches_with_directory = False

    def __init__(self, backend: ClusterBackend, uow: UnitOfWork, settings: WarmPoolSettings,
                 replica: Replica | None = None):
        self.backend, self.uow, self.settings = backend, uow, settings
        self.replica = replica or Replica(settings.replica_id)
        self.replica_id = self.replica.replica_id
        self.stats = LeaseStats()

    async def with_downloads(self, req: LeaseRequest, reply: LeaseReply) -> LeaseReply:
        return reply  # a pod's downloads stay in the pod (not kept or served yet)

    async def take_idle(self, req: LeaseRequest) -> LeaseReply | None:
        return None  # a Ready pod is claimed from the cluster, never held in the database

    async def lease_new(self, req: LeaseRequest, *, tenant: Row, directory: bytes | None = None) -> LeaseReply:
        """Claim a Ready pod of the tenant's Deployment (waiting up to lease_wait_s for one).
        (`directory` is never given here: launches_with_directory is False.)"""
        browser_id = uuid4()
        # The row comes first: a pod is never leased without one, so a replica dying mid-claim
        # leaves a 'launching' row that reconcile retires (deleting the pod, if it got one).
        async with self.uow.begin() as tx:
            await tx.repo.insert_browser(browser_id=browser_id, tenant_id=req.tenant_id, replica_id=self.replica_id,
                                         owner_pid=self.replica.pid, host=self.replica.host,
                                         session_id=req.session_id, warm=True)
        try:
            claimed = await self.backend.claim(browser_id, namespace=tenant["namespace"], session_id=req.session_id,
                                               wait_s=self.settings.lease_wait_s)
        except Exception as exc:
            log.warning("claiming a pod failed", extra={"tenant_id": str(req.tenant_id), "error": repr(exc)[:300]})
            await self.kill(browser_id)
            metrics.LEASES.labels("error").inc()
            return LeaseReply(ok=False, error="error")
        if claimed is None:
            await mark_dead(self.uow, browser_id)
            metrics.LEASES.labels("no_capacity").inc()
            return LeaseReply(ok=False, error="no_capacity")
        async with self.uow.begin() as tx:
            row = await tx.repo.mark_ready(browser_id=browser_id, state="leased", pid=None, port=claimed.port,
                                           profile_dir=None, pod=claimed.pod, cdp_ws_url=claimed.cdp_ws_url)
        if row is None:  # the tenant was drained meanwhile
            await self.kill(browser_id)
            return LeaseReply(ok=False, error="unknown_tenant")
        self.stats.record(True)
        return LeaseReply(ok=True, browser_id=browser_id, cdp_ws_url=claimed.cdp_ws_url, warm=True)

    async def lease_context(self, req: LeaseRequest, *, tenant: Row) -> LeaseReply:
        metrics.CONTEXT_LEASES.labels("error").inc()
        return LeaseReply(ok=False, error="error",
                          message="isolation \"context\" is not available on the kubernetes backend yet")

    async def end_context(self, session_id: UUID) -> None:
        pass  # no context is ever leased here

    def request_refill(self, tenant_id: UUID) -> None:
        pass  # the ReplicaSet replaces a leased pod at once

    def may_destroy(self, row: Row) -> bool:
        return True

    async def close_and_pack(self, browser_id: UUID, *, cdp_ws_url: str, max_bytes: int) -> bytes:
        raise NotImplementedError("a pod's user-data directory is not packed (launches_with_directory)")

    async def kill(self, browser_id: UUID) -> None:
        await self.backend.kill(browser_id)
        await mark_dead(self.uow, browser_id)

    async def destroy(self, browser_id: UUID) -> None:
        await self.backend.kill(browser_id)

    async def crashed(self) -> list[UUID]:
        # Rows before pods: a pod deleted after its row was read had its row retired first (which
        # mark_dead then sees), so only pods gone or failing unasked count as crashes.
        async with self.uow.connect() as tx:
            leased = await tx.repo.ids_in_states(states=["leased"])
        if not leased:
            return []
        alive = await self.backend.leased()
        return [b for b in leased if not alive.get(b, False)]

    async def reconcile(self) -> None:
        async with self.uow.begin() as tx:
            doomed = await tx.repo.in_state(state="retiring")
            # A claim whose replica died before it finished: its row is 'launching' for good.
            doomed += await tx.repo.in_state(state="launching", older_than_s=self.settings.launch_timeout_s + 30)
        await asyncio.gather(*(self.kill(b) for b in doomed))

    async def start_up(self) -> None:
        """Delete leased pods whose browser is no longer leased (or being leased) in the database.
        Pods before rows: a row is written before its pod is claimed, so a pod listed here that
        some replica is claiming right now already has its row."""
        pods = await self.backend.leased()
        async with self.uow.connect() as tx:
            live = await tx.repo.ids_in_states(states=["launching", "leased"])
        orphans = [b for b in pods if b not in live]
        await asyncio.gather(*(self.backend.kill(b) for b in orphans))
        if orphans:
            log.info("deleted leased pods without a lease", extra={"count": len(orphans)})

    async def shut_down(self) -> None:
        await self.backend.close()  # the pods outlive this replica; the others watch and end them
