"""The network slots of one host's browsers: slot N is a network namespace, its veth pair and
addresses, its uid and the directory `<state>/slots/N` with an owner file that its warm_pool
process holds locked while the slot is in use (a sweep takes only slots nobody holds). A few
namespaces are built ahead (spares), each for one browser only: it never held a process before,
and it is destroyed with its browser."""
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from services.warm_pool.adapters import netns

log = logging.getLogger(__name__)
SPARE_REFILL_DELAY_S = 0.25  # after a launch took one: let that launch have the CPU first


@dataclass(frozen=True)
class Spare:
    """A network namespace built ahead, never used yet, and the slot lock that keeps it ours."""
    net: netns.BrowserNet
    lock: int
    blocked: tuple[str, ...]


class NetworkSlots:
    def __init__(self, host: netns.HostNetwork, *, slots_dir: Path, spare_networks: int):
        self.host, self.dir, self.spare_networks = host, slots_dir, spare_networks
        self._spares: list[Spare] = []
        self._filling: asyncio.Task | None = None
        self._stopping = False

    @property
    def spares(self) -> list[Spare]:
        return list(self._spares)

    async def take(self, browser_id: UUID) -> Spare:
        """A namespace for `browser_id`: a spare if one is ready, else one built now; spares are
        then built again in the background."""
        spare = self._take_spare(browser_id) or await self._build(browser_id)
        self._refill()
        return spare

    def _claim(self, browser_id: UUID | None) -> tuple[int, int]:
        """A free slot, claimed atomically with its owner file already in it and locked: (slot,
        lock fd). A directory renamed onto an existing slot (never empty) fails."""
        claim = self.dir / f".claim-{uuid.uuid4().hex}"
        claim.mkdir()
        owner = claim / "owner.json"
        owner.write_text(json.dumps({"pid": os.getpid(), "browser_id": browser_id and str(browser_id)}))
        fd = os.open(owner, os.O_RDWR | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
        count = self.host.slots
        start = random.randrange(count)
        for i in range(count):
            slot = (start + i) % count
            try:
                os.rename(claim, self.dir / str(slot))
            except OSError:  # taken (ENOTEMPTY / EEXIST)
                continue
            return slot, fd
        os.close(fd)
        shutil.rmtree(claim, ignore_errors=True)
        raise netns.NetworkError("every browser network slot is taken (BROWSER_NET_CIDR)")

    async def _build(self, browser_id: UUID | None) -> Spare:
        slot, lock = self._claim(browser_id)
        net = netns.BrowserNet(slot, *self.host.addresses(slot))
        blocked = tuple(self.host.all_blocked)
        try:
            await netns.create(net, blocked=list(blocked))
        except BaseException:
            await asyncio.shield(self.drop(net.slot, lock))
            raise
        return Spare(net, lock, blocked)

    async def drop(self, slot: int, lock: int) -> None:
        """The slot's namespace and directory gone, and its lock let go (if it is still held)."""
        await netns.destroy(slot)
        shutil.rmtree(self.dir / str(slot), ignore_errors=True)
        if lock >= 0:
            os.close(lock)

    def _take_spare(self, browser_id: UUID) -> Spare | None:
        """A spare namespace made with the filter rules of now (a spare from before the host
        joined a network is dropped), its slot now named for `browser_id`."""
        blocked = tuple(self.host.all_blocked)
        while self._spares:
            spare = self._spares.pop()
            if spare.blocked != blocked:
                asyncio.ensure_future(self.drop(spare.net.slot, spare.lock))
                continue
            owner = self.dir / str(spare.net.slot) / "owner.json"
            owner.write_text(json.dumps({"pid": os.getpid(), "browser_id": str(browser_id)}))
            return spare
        return None

    def _refill(self) -> None:
        if self.spare_networks > 0 and not self._stopping and (self._filling is None or self._filling.done()):
            self._filling = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        await asyncio.sleep(SPARE_REFILL_DELAY_S)
        while not self._stopping and len(self._spares) < self.spare_networks:
            try:
                spare = await self._build(None)
            except (OSError, netns.NetworkError) as exc:  # launches build their own meanwhile
                log.warning("building a spare browser network failed", extra={"error": str(exc)[:300]})
                return
            if self._stopping:
                await self.drop(spare.net.slot, spare.lock)
                return
            self._spares.append(spare)

    async def close_spares(self) -> None:
        """No more spares: the one being built is finished and dropped, the others too."""
        self._stopping = True
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._filling
        spares, self._spares = self._spares, []
        for spare in spares:
            await self.drop(spare.net.slot, spare.lock)

    def remove_own(self) -> None:
        """Every slot of this process's, whatever a cut-off launch or release left; no spares after."""
        self._stopping = True
        for entry in self.dir.iterdir() if self.dir.is_dir() else ():
            with contextlib.suppress(OSError, ValueError, KeyError):
                if entry.name.isdigit() and json.loads((entry / "owner.json").read_text())["pid"] == os.getpid():
                    netns.destroy_sync(int(entry.name))
                    shutil.rmtree(entry, ignore_errors=True)

    def remove_stale(self) -> list[int]:
        """Slots whose lock nobody holds (their warm_pool died): namespace, veth and directory."""
        removed = []
        for entry in self.dir.iterdir():
            if entry.name.startswith(".claim-") and time.time() - entry.stat().st_mtime > 60:
                shutil.rmtree(entry, ignore_errors=True)  # a claim that died half-made
                continue
            if not entry.name.isdigit() or held(entry / "owner.json"):
                continue
            netns.destroy_sync(int(entry.name))
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(int(entry.name))
        return removed


def held(lock: Path) -> bool:
    """Is an flock held on this file by anyone (another process, or another fd of ours)?"""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
