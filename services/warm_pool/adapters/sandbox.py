"""The sandbox every local browser runs in, so one host can serve many tenants.

Per browser: a network namespace of its own (netns.py: the internet and the listed host ports,
nothing else), a uid of its own (never root; Chromium's own sandbox stays on), and bubblewrap
for the rest: a mount namespace where the system is read-only and only the browser's own
directory is writable, private /tmp and /dev/shm, its own PID, IPC and UTS namespaces, an empty
environment. Its processes are in cgroups capping memory, processes and CPU weight, beneath a
tenant cgroup capping what all of that tenant's browsers take together.

The launch command is started from a thread inside the browser's network namespace (so it
begins there); it joins the cgroups before anything else runs, drops to the browser's uid and
execs bubblewrap:
    sh (join cgroups) → setpriv (uid, no groups, no caps) → bwrap → chromium

Off the launch path: a few network namespaces are built ahead (veth, addresses, both nft
tables), each for one browser only: it never held a process before, and it is destroyed with
its browser. CPU: a browser waiting in the pool weighs almost nothing (IDLE_CPU_WEIGHT) until it
is leased; its tenant's group and the group of all browsers weigh what their browsers in use
do, so N browsers in use get what N unsandboxed ones would, and a tenant at most what its plan's
browsers would.

Here: the lifecycle of one browser's sandbox (start, prepare, spawn, release) and the CPU
weights; the launch command in sandbox_command.py, the network slots and spares in
network_slots.py, the configuration and the limits it implies in sandbox_config.py.
"""
import asyncio
import contextlib
import fcntl
import logging
import os
import resource
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from services.warm_pool.adapters import cgroups, netns
from services.warm_pool.adapters.mounts import mount_tmpfs, unmount
from services.warm_pool.adapters.network_slots import NetworkSlots, held
from services.warm_pool.adapters.relays import NamespaceRelays, host_resolvers
from services.warm_pool.adapters.sandbox_command import launch_command, namespaces_probe, write_etc
from services.warm_pool.adapters.sandbox_config import (IDLE_CPU_WEIGHT, MAX_CPU_WEIGHT, SandboxConfig,
                                                        all_browsers_limits, browser_and_tenant_limits)

log = logging.getLogger(__name__)
TOOLS = ("bwrap", "setpriv", "ip", "nft")


class SandboxUnavailable(Exception):
    """The host cannot build the sandbox (no namespaces, not root, a tool missing)."""


@dataclass
class Prepared:
    """What one sandboxed browser holds on the host, to be released when it dies."""
    slot: int
    net: netns.BrowserNet
    uid: int
    tenant_id: UUID
    browser_id: UUID
    argv: list[str]
    relays: NamespaceRelays
    home_fd: int = -1  # the browser's directory, opened here: bwrap mounts it whatever its parents' modes
    slot_lock: int = -1  # held while the slot is in use: a sweep takes only slots nobody holds
    home: Path | None = None
    tenant_cap: int = MAX_CPU_WEIGHT  # what all of its tenant's browsers may weigh (its plan's)
    cpu_weight: int = IDLE_CPU_WEIGHT

    def close_fd(self) -> None:
        if self.home_fd >= 0:
            os.close(self.home_fd)
            self.home_fd = -1

    @property
    def cgroup(self) -> tuple[str, ...]:
        return (f"tenant-{self.tenant_id}", f"browser-{self.browser_id}")


class Sandbox:
    def __init__(self, config: SandboxConfig, *, chromium_path: str, profile_root: Path):
        self.config = config
        self.chromium = os.path.realpath(chromium_path)  # the Debian wrapper is a shell script
        self.profile_root = profile_root
        self.etc_dir = config.state_dir / "etc"
        self.host = netns.HostNetwork(cidr=config.net_cidr, blocked=config.blocked_networks,
                                      max_connections=config.max_connections)
        self.slots = NetworkSlots(self.host, slots_dir=config.state_dir / "slots",
                                  spare_networks=config.spare_networks)
        self._lock_fd = -1
        self.cgroups = None
        self._resolvers = host_resolvers()
        self._cgroup_lock = asyncio.Lock()  # a tenant's group is not removed while a browser joins it
        self._live: dict[UUID, Prepared] = {}  # by browser: the CPU weights are sums over them

    # --- start and stop ------------------------------------------------------------------

    def start(self, *, alive=None) -> None:
        """Check the host can sandbox, then set up what all browsers share. Whose leftovers are
        whose is decided by locks the owners hold (`alive` is accepted for older callers)."""
        if os.geteuid() != 0:
            raise SandboxUnavailable("warm_pool must run as root to build browser sandboxes "
                                     "(network namespaces, cgroups, per-browser users)")
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise SandboxUnavailable(f"missing tools: {', '.join(missing)} (Debian: bubblewrap, util-linux, "
                                     "iproute2, nftables)")
        self._hold_process_lock()
        # Relays hold two descriptors per connection: the hard limit, not the usual soft 1024.
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        try:
            self.cgroups = cgroups.detect(f"browserfleet-{os.getpid()}")
            self.cgroups.setup()
            self.cgroups.limit_base(all_browsers_limits(self.config))
        except (OSError, cgroups.CgroupError) as exc:
            raise SandboxUnavailable(f"cannot create cgroups beneath this process's own: {exc}") from exc
        try:
            self.host.setup()
        except (OSError, netns.NetworkError) as exc:
            raise SandboxUnavailable(f"cannot set up browser networking: {exc}") from exc
        self._check_reachable(self.profile_root)
        self.slots.dir.mkdir(parents=True, exist_ok=True)
        write_etc(self.etc_dir)
        self.remove_stale()
        self._probe()

    @staticmethod
    def _check_reachable(root: Path) -> None:
        """Each browser's unprivileged user mounts its own directory below `root`: every parent
        must let others through (x), none need let them list (r)."""
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o711)
        for parent in root.resolve().parents:
            if not os.stat(parent).st_mode & 0o001:
                raise SandboxUnavailable(f"PROFILE_ROOT {root} is below {parent}, which other users cannot "
                                         "traverse (mode o+x needed); choose another PROFILE_ROOT")

    def _probe(self) -> None:
        """Namespaces must work for an unprivileged uid: try the same chain on `true`."""
        uid = self.config.uid_base
        proc = subprocess.run(namespaces_probe(uid), capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        if proc.returncode != 0:
            raise SandboxUnavailable("an unprivileged user cannot create namespaces here "
                                     f"(bwrap: {proc.stderr.strip()[:200]}); check user.max_user_namespaces, "
                                     "kernel.unprivileged_userns_clone and the seccomp/AppArmor profile")

    # --- liveness: a lock its owner holds while it lives ----------------------------------

    def _hold_process_lock(self) -> None:
        owners = self.config.state_dir / "owners"
        owners.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self._lock_path(os.getpid()), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def _lock_path(self, pid: int) -> Path:
        # Named by host too: replicas in containers may share the state dir, not pid numbers.
        return self.config.state_dir / "owners" / f"{socket.gethostname()}-{pid}.lock"

    def owner_alive(self, pid: int) -> bool:
        """Does warm_pool process `pid` (of this host or container) still hold its lock?"""
        return pid == os.getpid() or held(self._lock_path(pid))

    def stop(self) -> None:
        """Everything of this process's, whatever a cut-off launch or release left (spare
        namespaces too: call `close_spares` first from the event loop, so none is being built)."""
        self.slots.remove_own()
        if self.cgroups is not None:
            for group in self.cgroups.groups():
                cgroups._kill_tasks([p for p in group.rglob("*") if p.is_dir()])
                cgroups._rmdir_tree(group)
        with contextlib.suppress(netns.NetworkError, OSError):
            self.host.teardown()
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path(os.getpid()))
            os.close(self._lock_fd)
            self._lock_fd = -1

    def remove_stale(self, alive=None) -> None:
        """What dead warm_pool processes on this host left (cgroup trees, filter tables, slots),
        and this process's own filter table put back if a firewall reload removed it."""
        cgroups.remove_stale(self.cgroups, prefix="browserfleet-", alive=self.owner_alive)
        tables = self.host.tables()  # listed once for both (this runs every UPKEEP_S)
        self.host.remove_stale(self.owner_alive, tables)
        self.slots.remove_stale()
        changed = self.host.ensure(tables)
        if changed:
            log.error("browser filter table restored", extra={"reason": changed})
        for lock in (self.config.state_dir / "owners").glob(f"{socket.gethostname()}-*.lock"):
            pid = lock.stem.rsplit("-", 1)[-1]
            if pid.isdigit() and not self.owner_alive(int(pid)):
                with contextlib.suppress(OSError):
                    lock.unlink()

    async def close_spares(self) -> None:
        """No more spare network namespaces: the one being built is finished and dropped, the others too."""
        await self.slots.close_spares()

    # --- CPU weights ------------------------------------------------------------------------

    def _reweigh(self, tenant: str) -> None:
        """Its tenant's group and the group of all browsers weigh what their browsers do (a
        tenant at most its plan's browsers)."""
        browsers = [p for p in self._live.values() if p.cgroup[0] == tenant]
        with contextlib.suppress(OSError):  # the tenant's group is gone with its last browser
            if browsers:
                weight = min(browsers[0].tenant_cap, sum(p.cpu_weight for p in browsers))
                self.cgroups.set_cpu_weight((tenant,), max(IDLE_CPU_WEIGHT, weight))
        tenants: dict[str, int] = {}
        for p in self._live.values():
            tenants[p.cgroup[0]] = min(p.tenant_cap, tenants.get(p.cgroup[0], 0) + p.cpu_weight)
        self.cgroups.set_cpu_weight((), min(MAX_CPU_WEIGHT, max(100, sum(tenants.values()))))

    def prioritize(self, prepared: Prepared) -> None:
        """Leased (or waited for): from the pool's idle weight to a browser's full one."""
        if prepared.cpu_weight != self.config.browser_cpu_weight and prepared.browser_id in self._live:
            prepared.cpu_weight = self.config.browser_cpu_weight
            with contextlib.suppress(OSError):  # it died meanwhile
                self.cgroups.set_cpu_weight(prepared.cgroup, prepared.cpu_weight)
            self._reweigh(prepared.cgroup[0])

    # --- one browser ---------------------------------------------------------------------

    async def prepare(self, *, browser_id: UUID, tenant_id: UUID, tenant_browsers: int, base: Path,
                      flags: list[str], urgent: bool) -> Prepared:
        spare = await self.slots.take(browser_id)
        slot = spare.net.slot
        uid = self.config.uid_base + slot
        browser_limits, tenant_limits = browser_and_tenant_limits(self.config, tenant_browsers)
        prepared = Prepared(slot=slot, net=spare.net, uid=uid, tenant_id=tenant_id, browser_id=browser_id,
                            argv=[], relays=NamespaceRelays(), slot_lock=spare.lock, home=base,
                            tenant_cap=tenant_limits.cpu_weight,
                            cpu_weight=self.config.browser_cpu_weight if urgent else IDLE_CPU_WEIGHT)
        try:
            async with self._cgroup_lock:
                self.cgroups.create(prepared.cgroup[:1], tenant_limits, subtree=True)
                self.cgroups.create(prepared.cgroup, cgroups.Limits(
                    memory_bytes=browser_limits.memory_bytes, pids=browser_limits.pids,
                    cpu_weight=prepared.cpu_weight), subtree=False)
                self._live[browser_id] = prepared
                self._reweigh(prepared.cgroup[0])
            base.mkdir(exist_ok=True)
            # Its own filesystem, size-capped: one tenant cannot fill what everyone writes to.
            mount_tmpfs(base, size_mib=self.config.browser_disk_mib, uid=uid)
            for sub in ("profile", "downloads"):
                (base / sub).mkdir(exist_ok=True)
            for path in (base, base / "profile", base / "downloads"):
                os.chown(path, uid, uid)
                os.chmod(path, 0o700)
            await prepared.relays.open(prepared.net.path, host_ports=self.config.host_ports,
                                       resolvers=self._resolvers)
        except BaseException:
            await asyncio.shield(self.release(prepared))  # a second cancellation must not cut it short
            raise
        prepared.home_fd = os.open(base, os.O_PATH | os.O_DIRECTORY)
        prepared.argv = launch_command(cgroup_procs=[str(p) for p in self.cgroups.procs_files(prepared.cgroup)],
                                       uid=uid, home_fd=prepared.home_fd, marker=base, etc_dir=self.etc_dir,
                                       chromium=self.chromium, flags=flags)
        return prepared

    def spawn(self, prepared: Prepared, **popen) -> subprocess.Popen:
        """Start its launch command from the thread inside its network namespace: the command
        is in the namespace from its first instruction, with no nsenter in between. (Blocking:
        call it from a worker thread; it waits its turn for the namespace thread.)"""
        return netns.NS_THREAD.submit(netns.in_netns, prepared.net.path,
                                      lambda: subprocess.Popen(prepared.argv, **popen)).result()

    def devtools(self, prepared: Prepared) -> tuple[str, int]:
        return prepared.net.ip, netns.DEVTOOLS_PORT

    def oom_killed(self, prepared: Prepared) -> bool:
        return self.cgroups.oom_killed(prepared.cgroup)

    def kill(self, prepared: Prepared) -> None:
        self.cgroups.kill(prepared.cgroup)

    def kill_inside(self, prepared: Prepared, *, launcher: int) -> None:
        """Everything but the launcher (the outer bwrap, our child): it then reaps its own child
        and exits, and we reap it. Killing all at once would leave the inner ones to init."""
        self.cgroups.kill_except(prepared.cgroup, launcher)

    async def release(self, prepared: Prepared) -> None:
        prepared.close_fd()
        if prepared.home is not None:  # first, before any await: a cancelled release still does it
            unmount(prepared.home)
        self._live.pop(prepared.browser_id, None)
        await prepared.relays.close()
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.kill, prepared.cgroup)
            async with self._cgroup_lock:
                self.cgroups.remove(prepared.cgroup)
                self.cgroups.remove_empty(prepared.cgroup[:1])
                with contextlib.suppress(OSError):
                    self._reweigh(prepared.cgroup[0])
        await self.slots.drop(prepared.slot, prepared.slot_lock)
        prepared.slot_lock = -1
