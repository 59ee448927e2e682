"""Context leases held ready, per tenant: after a tenant's context session starts, this replica
leases up to CONTEXT_RESERVE more contexts for it in the background, each for a session id of
its own that no session has yet. The tenant's next context create (without a profile) takes one
and records its session on that id in a single transaction, with no lease round trip on the
path. A reservation is a fresh context nobody can reach: the relay needs the session's token,
and there is no session yet.

One the tenant did not use within CONTEXT_RESERVE_TTL_S is released (`LeaseReleased`: warm_pool
disposes the context). That deadline is also at most half of warm_pool's own for unconfirmed
leases, which its lease reply states (`confirm_within_s`, its LEASE_CONFIRM_TIMEOUT_S), so a
reservation is never taken after warm_pool has reclaimed it, whatever either service is set to. A
reservation in a browser that crashed is dropped, and on shutdown all are released.
"""
import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID, uuid4

from services.sessions.metrics import RESERVATIONS
from services.sessions.ports import Lease, UnitOfWork
from shared.messages import LeaseReleased, LeaseReply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reserved:
    session_id: UUID
    tenant_id: UUID
    reply: LeaseReply
    leased_at: float


class Reservations:
    def __init__(self, lease: Lease, uow: UnitOfWork, *, per_tenant: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.lease, self.uow, self.per_tenant, self.ttl_s, self.clock = lease, uow, per_tenant, ttl_s, clock
        self.held: dict[UUID, list[Reserved]] = {}
        self.filling: dict[UUID, asyncio.Task] = {}
        self.gone: dict[UUID, float] = {}  # browsers reported crashed, and when: none of theirs is kept
        self.releasing: set[asyncio.Task] = set()  # referenced until done (the loop holds tasks weakly)

    def take(self, tenant_id: UUID) -> Reserved | None:
        """The tenant's oldest fresh reservation, now this caller's alone; None if it has none."""
        held = self.held.get(tenant_id)
        while held:
            reserved = held.pop(0)
            if self._usable(reserved):
                RESERVATIONS.labels("taken").inc()
                return reserved
            self._release_later(reserved)
        return None

    def give_back(self, reserved: Reserved) -> None:
        """Unused after all (the create was refused before recording anything on its id); kept
        only if still usable and the tenant holds fewer than `per_tenant` (a refill may have run)."""
        if self._usable(reserved) and self.count(reserved.tenant_id) < self.per_tenant:
            self.held.setdefault(reserved.tenant_id, []).insert(0, reserved)
        else:
            self._release_later(reserved)

    def replenish(self, tenant_id: UUID) -> None:
        """Lease in the background until the tenant holds `per_tenant` (one filling at a time)."""
        if self.per_tenant > 0 and tenant_id not in self.filling:
            self.filling[tenant_id] = asyncio.create_task(self._fill(tenant_id))

    def drop_browser(self, browser_id: UUID) -> None:
        """Its browser is gone: its reservations with it (warm_pool ends their contexts itself),
        and any of its that a create gives back or a lease still on its way brings."""
        self.gone[browser_id] = self.clock()
        for tenant_id, held in self.held.items():
            kept = [r for r in held if r.reply.browser_id != browser_id]
            RESERVATIONS.labels("dropped").inc(len(held) - len(kept))
            self.held[tenant_id] = kept

    async def sweep(self) -> None:
        """Release the reservations past their deadline."""
        expired = []
        for tenant_id in list(self.held):
            kept = []
            for r in self.held[tenant_id]:  # judged once each: a deadline passing now cannot lose one
                (kept if self._usable(r) else expired).append(r)
            self.held[tenant_id] = kept
            if not kept and tenant_id not in self.filling:
                del self.held[tenant_id]
        forget = self.clock() - 2 * self.ttl_s  # longer than any reservation of theirs can live
        self.gone = {b: at for b, at in self.gone.items() if at > forget}
        await self._release(expired)

    async def close(self) -> None:
        for task in self.filling.values():
            task.cancel()
        await asyncio.gather(*self.filling.values(), return_exceptions=True)
        held = [r for rs in self.held.values() for r in rs]
        self.held.clear()
        await asyncio.gather(self._release(held), *self.releasing, return_exceptions=True)

    def count(self, tenant_id: UUID) -> int:
        return sum(1 for r in self.held.get(tenant_id, ()) if self._usable(r))

    def _usable(self, reserved: Reserved) -> bool:
        return self._fresh(reserved) and reserved.reply.browser_id not in self.gone

    def _fresh(self, reserved: Reserved) -> bool:
        """Within its deadline: CONTEXT_RESERVE_TTL_S, and never past half of the time warm_pool
        gives the lease to be confirmed (the rest is for session_started to get there)."""
        confirm = reserved.reply.confirm_within_s
        deadline = self.ttl_s if confirm is None else min(self.ttl_s, confirm / 2)
        return self.clock() - reserved.leased_at < deadline

    async def _fill(self, tenant_id: UUID) -> None:
        try:
            while self.count(tenant_id) < self.per_tenant:
                session_id, started = uuid4(), self.clock()
                try:
                    reply = await self.lease(tenant_id, session_id, isolation="context", ahead=True)
                except Exception as exc:  # the next create tries again
                    log.info("reserving a context failed", extra={"tenant_id": str(tenant_id), "error": type(exc).__name__})
                    return
                if not (reply.ok and reply.cdp_ws_url and reply.context_id):
                    if reply.ok:
                        await self._release([Reserved(session_id, tenant_id, reply, started)])
                    RESERVATIONS.labels("refused").inc()
                    return
                if reply.browser_id in self.gone:  # its browser crashed while the lease was answered
                    return
                self.held.setdefault(tenant_id, []).append(Reserved(session_id, tenant_id, reply, started))
                RESERVATIONS.labels("leased").inc()
        finally:
            self.filling.pop(tenant_id, None)

    def _release_later(self, reserved: Reserved) -> None:
        task = asyncio.get_running_loop().create_task(self._release([reserved]))
        self.releasing.add(task)
        task.add_done_callback(self.releasing.discard)

    async def _release(self, reservations: list[Reserved]) -> None:
        if not reservations:
            return
        try:
            async with self.uow.begin() as tx:
                for r in reservations:
                    await tx.publish(LeaseReleased(session_id=r.session_id, tenant_id=r.tenant_id,
                                                   browser_id=r.reply.browser_id))
        except Exception as exc:  # warm_pool reclaims unconfirmed leases on its own, later
            log.warning("releasing reservations failed", extra={"count": len(reservations), "error": type(exc).__name__})
            return
        RESERVATIONS.labels("released").inc(len(reservations))
