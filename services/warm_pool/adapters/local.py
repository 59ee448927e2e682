"""Local backend: one Chromium process per browser on this host.

Each browser gets `<profile_root>/<browser_id>/` holding its profile (`profile/`) and an
`owner.json` naming the warm_pool process that started it and Chromium's pid, so a successor
can find and remove what a crashed replica left behind.
"""
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
import websockets

from services.warm_pool import domain, metrics
from services.warm_pool.adapters.contexts import ContextHosts, OpenedContext
from services.warm_pool.adapters.expose import PortForwarder
from services.warm_pool.adapters.mounts import mounts_under, unmount
from services.warm_pool.adapters.sandbox import Prepared, Sandbox
from services.warm_pool.ports import Keeper
from services.warm_pool.profile_archive import pack, unpack
from shared.browsers import CHROMIUM_FLAGS

log = logging.getLogger(__name__)

FLAGS = ["--headless", "--no-sandbox", *CHROMIUM_FLAGS, "--remote-debugging-port=0"]
# In the sandbox Chromium's own sandbox stays on (it runs as an unprivileged user there), and
# DevTools has a fixed port in the browser's own network namespace (the sandbox adds it).
SANDBOXED_FLAGS = [f for f in FLAGS if f not in ("--no-sandbox", "--remote-debugging-port=0")]


# Browsers start and wait in the pool under SCHED_IDLE: they only get CPU nobody else wants, so
# launches refilling the pool never starve the control plane or the sessions in use. (A nice
# value is not enough: Chromium running as root re-nices its own processes.) A leased browser
# is moved back to the normal policy (`prioritize`), every thread of its process group.


class LaunchFailed(Exception):
    pass


@dataclass(frozen=True)
class Launched:
    pid: int
    port: int
    profile_dir: str
    cdp_ws_url: str


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _singleton_dir(browser_dir: Path) -> list[str]:
    """The directory Chromium made in the system temp dir for its singleton socket. Chromium
    removes it on a clean exit only, so after a SIGKILL it goes with the browser's directory.
    (TMPDIR inside the browser's directory would make the socket path too long to bind.)"""
    try:
        target = Path(os.readlink(browser_dir / "profile" / "SingletonSocket")).parent
    except OSError:
        return []
    # The link is the browser's to write: follow it only to where Chromium puts that directory.
    if target.parent == Path(tempfile.gettempdir()) and target.name.startswith("org.chromium.Chromium."):
        return [str(target)]
    return []


def _remove_dir(path: Path) -> None:
    """`rm -rf`, which follows no link and has no recursion limit (a tenant's tree may be deep)."""
    unmount(path / "home")
    for extra in _singleton_dir(path):
        shutil.rmtree(extra, ignore_errors=True)
    for _ in range(3):  # a dying child may still drop a file in while the tree is removed
        subprocess.run(["rm", "-rf", "--", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not path.exists():
            return
        time.sleep(0.05)


async def _remove_dir_async(path: Path) -> None:
    """`rm -rf` in a child process: a Python rmtree in a thread holds the GIL for much of a
    profile's ~200 files and stalls the event loop that answers leases."""
    unmount(path / "home")  # a sandboxed browser's own filesystem
    also = _singleton_dir(path)
    for _ in range(3):  # a dying child may still drop a file in while the tree is removed
        proc = await asyncio.create_subprocess_exec("rm", "-rf", "--", str(path), *also,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await proc.wait()
        if not path.exists():
            return
        await asyncio.sleep(0.05)


PROMOTE_AFTER_S = 3.0
UPKEEP_S = 2.0


def _set_autogroup_nice(pid: int, nice: int) -> None:
    """Each browser runs in a session of its own, which Linux's autogroup scheduling turns into
    a CPU group of its own, weighed against other groups by this nice value alone: without it,
    SCHED_IDLE inside a launching browser's group holds nothing back from the sessions in use."""
    with contextlib.suppress(OSError):  # no autogroup support, or not permitted: stays as it is
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def _normal_priority(pgid: int) -> None:
    """SCHED_OTHER for every thread of every process in the group (the policy is per thread)."""
    _set_autogroup_nice(pgid, 0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for tid in os.listdir(f"/proc/{entry.name}/task"):
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
        except OSError:  # gone meanwhile, or not permitted (no CAP_SYS_NICE): stays idle-class
            continue


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class TenantRefused(LaunchFailed, domain.TenantRefused):
    """Without a sandbox this host serves one tenant only."""


class LocalChromium:
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

    def _check_tenant(self, tenant_id: UUID | None) -> None:
        if self.sandbox is not None or tenant_id is None:
            return
        if self._only_tenant is None:
            self._only_tenant = tenant_id
        elif tenant_id != self._only_tenant:
            metrics.SANDBOX_REFUSED.inc()
            log.error("BROWSER_SANDBOX=off: this warm_pool serves one tenant only; refusing a browser "
                      "for another", extra={"tenant_id": str(tenant_id), "serving": str(self._only_tenant)})
            raise TenantRefused("this host runs browsers without a sandbox (BROWSER_SANDBOX=off) "
                                "and serves another tenant")

    async def launch(self, browser_id: UUID, *, tenant_id: UUID | None = None, tenant_browsers: int = 1,
                     urgent: bool = False, directory: bytes | None = None) -> Launched:
        """`urgent`: a session waits for this one (or soon will), so it starts at normal priority.
        `directory`: a profile's packed user-data directory, unpacked into its profile first."""
        if self._closed:
            raise LaunchFailed("backend closed")
        self._check_tenant(tenant_id)
        self._inflight += 1  # close() waits for it: a launch cut off at exit would leak its sandbox
        try:
            return await self._launch(browser_id, tenant_id=tenant_id, tenant_browsers=tenant_browsers,
                                      urgent=urgent, directory=directory)
        finally:
            self._inflight -= 1

    async def _launch(self, browser_id: UUID, *, tenant_id: UUID | None, tenant_browsers: int,
                      urgent: bool, directory: bytes | None = None) -> Launched:
        base = self._dir(browser_id)
        base.mkdir(parents=True, exist_ok=False)
        owner = base / "owner.json"
        owner.write_text(json.dumps({"owner_pid": os.getpid()}))  # before the dir can look orphaned
        if self.sandbox is not None:
            started = time.perf_counter()
            try:
                prepared = await self.sandbox.prepare(
                    browser_id=browser_id, tenant_id=tenant_id, tenant_browsers=tenant_browsers,
                    base=base / "home", flags=SANDBOXED_FLAGS, urgent=urgent)
            except BaseException as exc:
                await _remove_dir_async(base)
                if isinstance(exc, (asyncio.CancelledError, LaunchFailed)):
                    raise
                raise LaunchFailed(f"sandbox: {exc}") from exc
            metrics.SANDBOX_SECONDS.observe(time.perf_counter() - started)
            self._sandboxed[browser_id] = prepared
            argv, env, devtools = prepared.argv, {"PATH": "/usr/bin:/bin"}, self.sandbox.devtools(prepared)
            keep = (prepared.home_fd,)
            if directory is not None:
                await self._unpack_profile(browser_id, directory, uid=prepared.uid)
        else:
            profile = base / "profile"
            profile.mkdir()
            if directory is not None:
                await self._unpack_profile(browser_id, directory, uid=None)
            argv = [*([] if urgent else ["chrt", "--idle", "0"]), self.chromium_path, *FLAGS,
                    f"--user-data-dir={profile}", "about:blank"]
            env, devtools, keep = None, None, ()
        # fork+exec in a thread: forking this process can take tens of ms, which would stall leases.
        popen = (subprocess.Popen if self.sandbox is None
                 else lambda argv, **kw: self.sandbox.spawn(self._sandboxed[browser_id], **kw))
        spawn = asyncio.ensure_future(asyncio.to_thread(
            popen, argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True, pass_fds=keep,
        ))
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:  # the thread still starts it: kill what it started
            self._procs[browser_id] = await spawn
            await self.kill(browser_id)
            raise
        except BaseException:
            await self.kill(browser_id)
            raise
        self._procs[browser_id] = proc
        if browser_id in self._sandboxed:  # the child has its own copy now
            self._sandboxed[browser_id].close_fd()
        if not urgent:
            _set_autogroup_nice(proc.pid, 19)
        if self._closed:  # shut down while it was starting
            await self.kill(browser_id)
            raise LaunchFailed("backend closed")
        owner.write_text(json.dumps({"owner_pid": os.getpid(), "pid": proc.pid}))
        try:
            port, url = await asyncio.wait_for(self._wait_ready(proc, base / ("home/profile" if devtools else "profile"), devtools),
                                               self.launch_timeout_s)
        except BaseException as exc:
            await self.kill(browser_id)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise LaunchFailed(f"chromium did not start: {exc!r}") from exc
        if self._forwarder is not None:
            host = devtools[0] if devtools else "127.0.0.1"
            exposed = await self._forwarder.open(browser_id, port, host=host)
            url = url.replace(f"//{host}:{port}/", f"//{self.advertise_host}:{exposed}/", 1)
        with contextlib.suppress(Exception):  # the lease's CDP commands then skip the handshake (~30 ms)
            await self.contexts.preconnect(browser_id, cdp_ws_url=url)
        return Launched(pid=proc.pid, port=port, profile_dir=str(base), cdp_ws_url=url)

    async def _wait_ready(self, proc: subprocess.Popen, profile: Path,
                          devtools: tuple[str, int] | None) -> tuple[int, str]:
        port_file = profile / "DevToolsActivePort"
        promote_at = time.monotonic() + PROMOTE_AFTER_S
        while True:
            if promote_at and time.monotonic() > promote_at:  # a saturated host must not starve it forever
                promote_at = 0
                self.prioritize(pid=proc.pid, host=socket.gethostname())
            if proc.poll() is not None:
                raise LaunchFailed(f"exited with {proc.returncode}")
            # The port file can lag the process start; /json/version answers once it is ready.
            with contextlib.suppress(OSError, ValueError, IndexError, KeyError, httpx.HTTPError):
                if devtools is not None:  # sandboxed: a fixed port in the browser's own namespace
                    if not port_file.exists():  # a stat, not a request to a browser still starting
                        raise OSError("not listening yet")
                    host, port = devtools
                else:
                    host, port = "127.0.0.1", int(port_file.read_text().splitlines()[0])
                resp = await self._http.get(f"http://{host}:{port}/json/version")
                if resp.status_code == 200:
                    return port, resp.json()["webSocketDebuggerUrl"]
            await asyncio.sleep(0.03 if devtools is None else 0.01)

    # --- profiles ----------------------------------------------------------------------------

    def _profile_path(self, browser_id: UUID) -> Path:
        """The user-data directory on the host (its sandbox's /browser/profile)."""
        return self._dir(browser_id) / ("home/profile" if self.sandbox is not None else "profile")

    async def _unpack_profile(self, browser_id: UUID, directory: bytes, *, uid: int | None) -> None:
        cap = (self.sandbox.config.browser_disk_mib if self.sandbox is not None else 1024) * 2**20
        target = self._profile_path(browser_id)
        try:
            await asyncio.to_thread(_unpack_owned, directory, target, max_bytes=cap, uid=uid)
        except BaseException:
            await self.kill(browser_id)
            raise

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
            asyncio.get_running_loop().run_in_executor(None, _normal_priority, pid)

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
        await _remove_dir_async(self._dir(browser_id))

    def _sweep_mounts(self) -> None:
        """A launch cut short by the stop can leave its browser's filesystem mounted: unmount
        every one under the profile root and remove those browsers' directories."""
        for point in mounts_under(self.profile_root):
            unmount(point)
            base = point.parent
            with contextlib.suppress(ValueError):
                if base.parent == self.profile_root and UUID(base.name) not in self._procs:
                    _remove_dir(base)

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
        await asyncio.to_thread(self._sweep_mounts)
        await self.contexts.close()
        await self._http.aclose()
        if self.sandbox is not None:
            await self.sandbox.close_spares()
            await asyncio.to_thread(self.sandbox.stop)
            await asyncio.to_thread(self._sweep_own_dirs)

    def _sweep_own_dirs(self) -> None:
        """Directories of this process's browsers still there at the stop (a launch cut off)."""
        for base in self.profile_root.iterdir() if self.profile_root.is_dir() else ():
            owner = {}
            with contextlib.suppress(OSError, ValueError):
                owner = json.loads((base / "owner.json").read_text())
            unowned = "owner_pid" not in owner and time.time() - base.stat().st_mtime > 5  # not a sibling's, just made
            if base.is_dir() and (owner.get("owner_pid") == os.getpid() or unowned):
                with contextlib.suppress(ValueError):
                    UUID(base.name)
                    _remove_dir(base)

    @staticmethod
    def live_warm_pool(pid: int) -> bool:
        """Is `pid` a live warm_pool process (this one or a sibling replica on this host)?"""
        return pid == os.getpid() or (_pid_alive(pid) and "services.warm_pool" in _cmdline(pid))

    def owner_alive(self, pid: int) -> bool:
        if self.sandbox is not None:  # a lock its owner holds: no pid reuse, no forged command line
            return self.sandbox.owner_alive(pid)
        return self.live_warm_pool(pid)

    async def remove_stale(self, browser_id: UUID, *, pid: int | None, profile_dir: str | None) -> None:
        await asyncio.to_thread(kill_stale, pid, profile_dir or str(self._dir(browser_id)))
        if self.keeper is not None:  # a crashed predecessor's browser: its sessions' downloads still count
            base = Path(profile_dir) if profile_dir else self._dir(browser_id)
            await self.keeper.keep(browser_id, base / "home" if self.sandbox is not None else base)
        await _remove_dir_async(Path(profile_dir) if profile_dir else self._dir(browser_id))

    async def remove_orphans(self) -> list[UUID]:
        if self.sandbox is not None:  # dead replicas' cgroups, namespaces and filter tables first
            await asyncio.to_thread(self.sandbox.remove_stale, self.owner_alive)
        return await asyncio.to_thread(self._remove_orphans)

    def _remove_orphans(self) -> list[UUID]:
        """Kill browsers and remove directories under profile_root whose owner process is gone."""
        removed = []
        if not self.profile_root.is_dir():
            return removed
        for base in self.profile_root.iterdir():
            if not base.is_dir():
                continue
            try:
                browser_id = UUID(base.name)
            except ValueError:
                continue
            if browser_id in self._procs:
                continue
            owner = {}
            with contextlib.suppress(OSError, ValueError):
                owner = json.loads((base / "owner.json").read_text())
            if owner.get("owner_pid") and self.owner_alive(int(owner["owner_pid"])):
                continue
            kill_stale(owner.get("pid"), str(base))
            _remove_dir(base)
            removed.append(browser_id)
        return removed


def _unpack_owned(data: bytes, target: Path, *, max_bytes: int, uid: int | None) -> None:
    """Unpack a profile's directory into the (empty) user-data directory, every entry then owned
    by the browser's uid (the sandbox's; unsandboxed, ours)."""
    target.mkdir(exist_ok=True)
    unpack(data, target, max_bytes=max_bytes)
    if uid is None:
        return
    for root, dirs, files in os.walk(target):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, uid)
    os.lchown(target, uid, uid)


def kill_stale(pid: int | None, profile_dir: str | None) -> None:
    """Kill a browser left by a dead replica: its recorded pid's group if that pid still runs
    this profile, and any other process whose command line names the profile."""
    if not profile_dir:
        return
    groups = set()
    if pid and _pid_alive(pid) and profile_dir in _cmdline(pid):
        groups.add(pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and profile_dir in _cmdline(int(entry.name)):
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(int(entry.name)))
    for group in groups - {os.getpgrp()}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)

