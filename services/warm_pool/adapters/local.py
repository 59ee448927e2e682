"""Local backend: one Chromium process per browser on this host, each in a directory of its own
(browser_dirs.py). Launches are in chromium_launch.py; here a lease raises a browser's CPU priority
(cpu_priority.py), contexts and downloads go to adapters/contexts.py, a browser's profile is packed
at its close, crashes and memory kills are noticed, and what a crashed replica left is removed.
"""
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from uuid import UUID

import httpx
import websockets

from services.warm_pool import metrics
from services.warm_pool.adapters import browser_dirs, cpu_priority
from services.warm_pool.adapters.chromium_launch import ChromiumLaunches
from services.warm_pool.adapters.contexts import ContextHosts, OpenedContext
from services.warm_pool.adapters.expose import PortForwarder
from services.warm_pool.adapters.sandbox import Prepared, Sandbox
from services.warm_pool.ports import Keeper
from services.warm_pool.profile_archive import pack

log = logging.getLogger(__name__)

UPKEEP_S = 2.0


class LocalChromium(ChromiumLaunches):
    def __init__(self, *, chromium_path: str, profile_root: Path, launch_timeout_s: float = 20,
                 advertise_host: str | None = None, sandbox: Sandbox | None = None, cdp_timeout_s: float = 10,
                 keeper: Keeper | None = None):
        self.chromium_path = chromium_path
        self.keeper = keeper  # keeps each session's downloads before a browser's tree goes
        self.contexts = ContextHosts(timeout_s=cdp_timeout_s, keeper=keeper)
        self.advertise_host = advertise_host
        self.sandbox = sandbox
        self._forwarder = PortForwarder() if advertise_host else None
        self.profile_root = Path(profile_root)
        self.launch_timeout_s = launch_timeout_s
        self._procs: dict[UUID, subprocess.Popen] = {}
        self._closing: set[UUID] = set()  # closed on purpose (a profile's save): not a crash
        self._sandboxed: dict[UUID, Prepared] = {}
        self._only_tenant: UUID | None = None
        self._next_upkeep = 0.0
        self._inflight = 0
        self._upkeep_task: asyncio.Future | None = None
        self._closed = False
        self._http = httpx.AsyncClient(timeout=2, trust_env=False)

    def _dir(self, browser_id: UUID) -> Path:
        return self.profile_root / str(browser_id)

    def _profile_path(self, browser_id: UUID) -> Path:
        """The user-data directory on the host (its sandbox's /browser/profile)."""
        return self._dir(browser_id) / ("home/profile" if self.sandbox is not None else "profile")

    async def close_and_pack(self, browser_id: UUID, *, cdp_ws_url: str, max_bytes: int) -> bytes:
        self._closing.add(browser_id)
        await self.contexts.forget(browser_id)
        proc = self._procs.get(browser_id)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                async with websockets.connect(cdp_ws_url, max_size=None, open_timeout=None,
                                              ping_interval=None) as ws:
                    await ws.send(json.dumps({"id": 1, "method": "Browser.close"}))
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await ws.recv()
        deadline = time.monotonic() + 10
        while proc is not None and proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        cap = (self.sandbox.config.browser_disk_mib if self.sandbox is not None else 1024) * 2**20
        return await asyncio.to_thread(pack, self._profile_path(browser_id), max_bytes=max_bytes,
                                       max_unpacked=cap)  # no more than unpack would take back

    # --- context hosts -----------------------------------------------------------------------

    def _home(self, browser_id: UUID) -> tuple[Path, str]:
        """The browser's writable home on the host, and as the browser sees it."""
        if self.sandbox is not None:
            return self._dir(browser_id) / "home", "/browser"
        return self._dir(browser_id), str(self._dir(browser_id))

    async def open_context(self, browser_id: UUID, *, cdp_ws_url: str, session_id: UUID,
                           first_page: bool) -> OpenedContext:
        home, seen_as = self._home(browser_id)
        return await self.contexts.open(browser_id, cdp_ws_url=cdp_ws_url, home=home, browser_home=seen_as,
                                        session_id=session_id, first_page=first_page)

    async def close_context(self, browser_id: UUID, *, cdp_ws_url: str, context_id: str | None,
                            session_id: UUID) -> None:
        await self.contexts.close_context(browser_id, cdp_ws_url=cdp_ws_url, context_id=context_id,
                                          home=self._home(browser_id)[0], session_id=session_id)

    async def browser_downloads(self, browser_id: UUID, *, cdp_ws_url: str, session_id: UUID) -> str:
        return await self.contexts.browser_downloads(browser_id, cdp_ws_url=cdp_ws_url,
                                                     browser_home=self._home(browser_id)[1], session_id=session_id)

    def memory_bytes(self, browser_id: UUID) -> int | None:
        """What the browser's sandbox holds in memory (its cgroup's), None unsandboxed."""
        prepared = self._sandboxed.get(browser_id)
        if prepared is None or self.sandbox is None or self.sandbox.cgroups is None:
            return None
        return self.sandbox.cgroups.memory_current(prepared.cgroup)

    def prioritize(self, *, pid: int | None, host: str) -> None:
        """Give a leased browser normal CPU priority (needs CAP_SYS_NICE; without it, it stays low)."""
        if pid and host == socket.gethostname():
            sandboxed = [self._sandboxed[b] for b, proc in self._procs.items() if proc.pid == pid and b in self._sandboxed]
            if sandboxed:  # its cgroup's weight, not its threads' class
                self.sandbox.prioritize(sandboxed[0])
                return
            asyncio.get_running_loop().run_in_executor(None, cpu_priority.normal_priority, pid)

    def exited(self) -> list[UUID]:
        """Browsers started here whose process has died (and is now reaped), or whose sandbox
        hit its memory limit (the kernel killed part of it: the rest goes too). Called often
        (the crash monitor): the sandbox's upkeep rides on it every few seconds."""
        self._upkeep()
        gone = []
        for bid, proc in list(self._procs.items()):
            prepared = self._sandboxed.get(bid)
            if bid in self._closing:
                continue
            if proc.poll() is not None:
                gone.append(bid)
            elif prepared is not None and self.sandbox.oom_killed(prepared):
                log.warning("browser hit its memory limit", extra={"browser_id": str(bid)})
                metrics.MEMORY_KILLS.inc()
                self.sandbox.kill_inside(prepared, launcher=proc.pid)
                gone.append(bid)
        return gone

    async def kill(self, browser_id: UUID) -> None:
        """SIGKILL the browser's whole process group, reap it, release its sandbox, remove its directory."""
        await self.contexts.forget(browser_id)
        self._closing.discard(browser_id)
        proc = self._procs.pop(browser_id, None)
        prepared = self._sandboxed.pop(browser_id, None)
        if self._forwarder is not None:
            await self._forwarder.close(browser_id)
        if proc is not None:
            if prepared is not None and proc.poll() is None:
                await asyncio.to_thread(self.sandbox.kill_inside, prepared, launcher=proc.pid)
                deadline = time.monotonic() + 2
                while proc.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if self.keeper is not None:  # whatever ended it: its filesystem is still mounted here
            await self.keeper.keep(browser_id, self._home(browser_id)[0])
        if prepared is not None:
            await self.sandbox.release(prepared)  # kills whatever is left in its cgroups
        await browser_dirs.remove_dir_async(self._dir(browser_id))

    def _upkeep(self) -> None:
        """Every UPKEEP_S, off the loop: the host's filter table put back if a firewall reload
        removed it, networks the host joined since blocked, dead replicas' leftovers removed."""
        if self.sandbox is None or self._closed or time.monotonic() < self._next_upkeep:
            return
        if self._upkeep_task is not None and not self._upkeep_task.done():
            return
        self._next_upkeep = time.monotonic() + UPKEEP_S
        self._upkeep_task = asyncio.ensure_future(asyncio.to_thread(self._upkeep_now))

    def _upkeep_now(self) -> None:
        try:
            self.sandbox.remove_stale()
        except Exception:  # noqa: BLE001 — logged; the next round tries again
            log.exception("sandbox upkeep failed")

    def owned(self) -> list[UUID]:
        return list(self._procs)

    async def kill_all(self) -> None:
        await asyncio.gather(*(self.kill(bid) for bid in list(self._procs)))

    async def close(self) -> None:
        self._closed = True
        deadline = time.monotonic() + 2 * self.launch_timeout_s
        while self._inflight and time.monotonic() < deadline:  # they see _closed and undo themselves
            await asyncio.sleep(0.02)
        await self.kill_all()
        await asyncio.to_thread(browser_dirs.sweep_mounts, self.profile_root, running=self._procs)
        await self.contexts.close()
        await self._http.aclose()
        if self.sandbox is not None:
            await self.sandbox.close_spares()
            await asyncio.to_thread(self.sandbox.stop)
            await asyncio.to_thread(browser_dirs.sweep_own_dirs, self.profile_root)

    live_warm_pool = staticmethod(browser_dirs.live_warm_pool)

    def owner_alive(self, pid: int) -> bool:
        if self.sandbox is not None:  # a lock its owner holds: no pid reuse, no forged command line
            return self.sandbox.owner_alive(pid)
        return self.live_warm_pool(pid)

    async def remove_stale(self, browser_id: UUID, *, pid: int | None, profile_dir: str | None) -> None:
        await asyncio.to_thread(browser_dirs.kill_stale, pid, profile_dir or str(self._dir(browser_id)))
        if self.keeper is not None:  # a crashed predecessor's browser: its sessions' downloads still count
            base = Path(profile_dir) if profile_dir else self._dir(browser_id)
            await self.keeper.keep(browser_id, base / "home" if self.sandbox is not None else base)
        await browser_dirs.remove_dir_async(Path(profile_dir) if profile_dir else self._dir(browser_id))

    async def remove_orphans(self) -> list[UUID]:
        if self.sandbox is not None:  # dead replicas' cgroups, namespaces and filter tables first
            await asyncio.to_thread(self.sandbox.remove_stale, self.owner_alive)
        return await asyncio.to_thread(browser_dirs.remove_orphans, self.profile_root, running=self._procs,
                                       owner_alive=self.owner_alive)

