"""When LocalPool refills a tenant's pool: one pass at a time per tenant, requests coalesced, and
launches that are not urgent held back after a lease (`domain.refill_hold_s`), so a refill's
launch does not compete for the CPU with the session just leased (its connect, first page, goto).
"""
import asyncio
import time
from typing import Awaitable, Callable, Protocol
from uuid import UUID

from services.warm_pool.pools import Background

# Lets the lease reply go out first, and gathers a burst of leases into one pass.
REFILL_DELAY_S = 0.02


class Clock(Protocol):
    """What a refill's hold is timed by (tests: tests/fakes/warm_pool.py's FakeClock)."""

    def now(self) -> float:
        """Seconds, monotonic."""

    async def sleep(self, seconds: float) -> None:
        """Return once `now()` has moved on by `seconds`."""


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# A refill pass: given how long ago the oldest lease it refills for was made (None: no lease is
# waiting for one), it starts what may start now and returns how long the rest is held (0: none).
RefillPass = Callable[[UUID, float | None], Awaitable[float]]


class Refills:
    """At most one pass per tenant runs and one more is queued behind it. A pass that held
    launches back runs again when its hold is over, or at once on the next request (a lease may
    have made the refill urgent); the hold counts from the oldest lease not yet refilled for, so
    later leases and reconcile's requests never push it further out."""

    def __init__(self, refill: RefillPass, background: Background, clock: Clock):
        self._refill, self._background, self.clock = refill, background, clock
        self.running: set[UUID] = set()
        self.again: set[UUID] = set()
        self.unserved: dict[UUID, float] = {}  # per tenant: when the oldest lease not refilled for was made
        self._wake: dict[UUID, asyncio.Event] = {}

    def leased(self, tenant_id: UUID) -> None:
        self.unserved.setdefault(tenant_id, self.clock.now())
        self.request(tenant_id)

    def request(self, tenant_id: UUID) -> None:
        if tenant_id in self.running:
            self.again.add(tenant_id)
            if tenant_id in self._wake:
                self._wake[tenant_id].set()
            return
        self.running.add(tenant_id)
        self._background.spawn(self._loop(tenant_id))

    def holding(self, tenant_id: UUID) -> bool:
        """The tenant's refill waits out a hold, and no request since has cut it short."""
        return tenant_id in self._wake and not self._wake[tenant_id].is_set()

    async def _loop(self, tenant_id: UUID) -> None:
        try:
            await asyncio.sleep(REFILL_DELAY_S)
            while True:
                self.again.discard(tenant_id)
                hold = await self._pass(tenant_id)
                if tenant_id in self.again:
                    continue
                if hold <= 0:
                    return
                if await self._held(tenant_id, hold):  # requested meanwhile: its reply first, too
                    await asyncio.sleep(REFILL_DELAY_S)
        finally:
            self.running.discard(tenant_id)

    async def _pass(self, tenant_id: UUID) -> float:
        leased_at = self.unserved.pop(tenant_id, None)  # a lease during the pass starts a hold of its own
        hold = await self._refill(tenant_id, None if leased_at is None else self.clock.now() - leased_at)
        if hold > 0 and leased_at is not None:
            self.unserved[tenant_id] = min(leased_at, self.unserved.get(tenant_id, leased_at))
        return hold

    async def _held(self, tenant_id: UUID, seconds: float) -> bool:
        """Wait out the hold; True if a request cut it short."""
        wake = self._wake[tenant_id] = asyncio.Event()
        timer = asyncio.ensure_future(self.clock.sleep(seconds))
        woken = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({timer, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            del self._wake[tenant_id]
            for waiting in (timer, woken):
                waiting.cancel()
            await asyncio.gather(timer, woken, return_exceptions=True)
        return wake.is_set()
