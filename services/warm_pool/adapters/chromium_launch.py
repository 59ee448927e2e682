"""LocalChromium's launches: a Chromium process (in the sandbox or not) started in its browser's
directory (browser_dirs.py), on a profile's user-data directory if it has one, and waited on until
its DevTools answers."""
import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx

from services.warm_pool import domain, metrics
from services.warm_pool.adapters import cpu_priority
from services.warm_pool.adapters.browser_dirs import remove_dir_async, unpack_owned
from services.warm_pool.adapters.contexts import ContextHosts
from services.warm_pool.adapters.expose import PortForwarder
from services.warm_pool.adapters.sandbox import Prepared, Sandbox
from shared.browsers import CHROMIUM_FLAGS

log = logging.getLogger(__name__)

FLAGS = ["--headless", "--no-sandbox", *CHROMIUM_FLAGS, "--remote-debugging-port=0"]
# In the sandbox Chromium's own sandbox stays on (it runs as an unprivileged user there), and
# DevTools has a fixed port in the browser's own network namespace (the sandbox adds it).
SANDBOXED_FLAGS = [f for f in FLAGS if f not in ("--no-sandbox", "--remote-debugging-port=0")]


class LaunchFailed(Exception):
    pass


@dataclass(frozen=True)
class Launched:
    pid: int
    port: int
    profile_dir: str
    cdp_ws_url: str


class TenantRefused(LaunchFailed, domain.TenantRefused):
    """Without a sandbox this host serves one tenant only."""


class ChromiumLaunches:
    """launch(): mixed into LocalChromium, whose processes, sandboxes and directories it fills in."""
    chromium_path: str
    sandbox: Sandbox | None
    launch_timeout_s: float
    advertise_host: str | None
    contexts: ContextHosts
    _forwarder: PortForwarder | None
    _http: httpx.AsyncClient
    _procs: dict[UUID, subprocess.Popen]
    _sandboxed: dict[UUID, Prepared]
    _only_tenant: UUID | None
    _inflight: int
    _closed: bool
    _dir: Callable[[UUID], Path]
    _profile_path: Callable[[UUID], Path]
    kill: Callable[[UUID], Awaitable[None]]
    prioritize: Callable[..., None]

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
                await remove_dir_async(base)
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
            cpu_priority.set_autogroup_nice(proc.pid, 19)
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
        promote_at = time.monotonic() + cpu_priority.PROMOTE_AFTER_S
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

    async def _unpack_profile(self, browser_id: UUID, directory: bytes, *, uid: int | None) -> None:
        cap = (self.sandbox.config.browser_disk_mib if self.sandbox is not None else 1024) * 2**20
        target = self._profile_path(browser_id)
        try:
            await asyncio.to_thread(unpack_owned, directory, target, max_bytes=cap, uid=uid)
        except BaseException:
            await self.kill(browser_id)
            raise

