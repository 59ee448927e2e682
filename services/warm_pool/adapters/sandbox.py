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
"""
import asyncio
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import random
import resource
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from services.warm_pool.adapters import cgroups, netns
from services.warm_pool.adapters.relays import NamespaceRelays, host_resolvers

log = logging.getLogger(__name__)
TOOLS = ("bwrap", "setpriv", "ip", "nft")
SPARE_REFILL_DELAY_S = 0.25  # after a launch took one: let that launch have the CPU first
IDLE_CPU_WEIGHT = 1  # a browser waiting in the pool (cgroup v2 units; v1 shares 10 against 1024)
MAX_CPU_WEIGHT = 10_000
ETC_FROM_HOST = ("fonts", "ssl", "ca-certificates", "alternatives", "ld.so.cache", "localtime",
                 "mime.types")
# Joins the browser's cgroups before anything else runs, and offers it first to the kernel's OOM killer.
JOIN_CGROUPS = ('echo 1000 > /proc/self/oom_score_adj; n=$1; shift; '
                'while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done; exec "$@"')


class SandboxUnavailable(Exception):
    """The host cannot build the sandbox (no namespaces, not root, a tool missing)."""


@dataclass(frozen=True)
class SandboxConfig:
    host_ports: list[int]
    net_cidr: str = "10.213.0.0/16"
    blocked_networks: list[str] = field(default_factory=list)
    uid_base: int = 2_100_000_000
    state_dir: Path = Path("/run/browserfleet")
    browser_memory_mib: int = 1024
    browser_pids: int = 512
    browser_cpu_weight: int = 100
    browser_disk_mib: int = 512
    max_connections: int = 2048
    tenant_memory_fraction: float = 0.5
    total_memory_fraction: float = 0.8
    spare_networks: int = 2  # network namespaces built ahead, each for one browser only


@dataclass(frozen=True)
class _Spare:
    """A network namespace built ahead, never used yet, and the slot lock that keeps it ours."""
    net: netns.BrowserNet
    lock: int
    blocked: tuple[str, ...]


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


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Sandbox:
    def __init__(self, config: SandboxConfig, *, chromium_path: str, profile_root: Path):
        self.config = config
        self.chromium = os.path.realpath(chromium_path)  # the Debian wrapper is a shell script
        self.profile_root = profile_root
        self.slots_dir = config.state_dir / "slots"
        self.etc_dir = config.state_dir / "etc"
        self.host = netns.HostNetwork(cidr=config.net_cidr, blocked=config.blocked_networks,
                                      max_connections=config.max_connections)
        self._lock_fd = -1
        self.cgroups = None
        self._resolvers = host_resolvers()
        self._cgroup_lock = asyncio.Lock()  # a tenant's group is not removed while a browser joins it
        self._spares: list[_Spare] = []
        self._filling: asyncio.Task | None = None
        self._stopping = False
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
            self.cgroups.limit_base(self._root_limits())
        except (OSError, cgroups.CgroupError) as exc:
            raise SandboxUnavailable(f"cannot create cgroups beneath this process's own: {exc}") from exc
        try:
            self.host.setup()
        except (OSError, netns.NetworkError) as exc:
            raise SandboxUnavailable(f"cannot set up browser networking: {exc}") from exc
        self._check_reachable(self.profile_root)
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        self._write_etc()
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
        proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                               "--inh-caps=-all", "bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr",
                               "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                               "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev",
                               "/usr/bin/true"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        if proc.returncode != 0:
            raise SandboxUnavailable("an unprivileged user cannot create namespaces here "
                                     f"(bwrap: {proc.stderr.strip()[:200]}); check user.max_user_namespaces, "
                                     "kernel.unprivileged_userns_clone and the seccomp/AppArmor profile")

    def _write_etc(self) -> None:
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.etc_dir, 0o755)
        files = {
            "passwd": "root:x:0:0::/:/usr/sbin/nologin\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
            "group": "root:x:0:\nnogroup:x:65534:\n",
            "hosts": "127.0.0.1 localhost\n::1 localhost\n",
            "resolv.conf": "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n",
            "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
        }
        for name, text in files.items():
            (self.etc_dir / name).write_text(text)

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
        return pid == os.getpid() or _held(self._lock_path(pid))

    def _root_limits(self) -> cgroups.Limits:
        """All browsers of this process together: most of the host, never all of it."""
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        return cgroups.Limits(memory_bytes=int(_host_memory_bytes() * self.config.total_memory_fraction),
                              pids=max(1024, pid_max // 2), cpu_weight=100)

    def stop(self) -> None:
        """Everything of this process's, whatever a cut-off launch or release left (spare
        namespaces too: call `close_spares` first from the event loop, so none is being built)."""
        self._stopping = True
        for entry in self.slots_dir.iterdir() if self.slots_dir.is_dir() else ():
            with contextlib.suppress(OSError, ValueError, KeyError):
                if entry.name.isdigit() and json.loads((entry / "owner.json").read_text())["pid"] == os.getpid():
                    netns.destroy_sync(int(entry.name))
                    shutil.rmtree(entry, ignore_errors=True)
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
        self.remove_stale_slots()
        changed = self.host.ensure(tables)
        if changed:
            log.error("browser filter table restored", extra={"reason": changed})
        for lock in (self.config.state_dir / "owners").glob(f"{socket.gethostname()}-*.lock"):
            pid = lock.stem.rsplit("-", 1)[-1]
            if pid.isdigit() and not self.owner_alive(int(pid)):
                with contextlib.suppress(OSError):
                    lock.unlink()

    def remove_stale_slots(self, alive=None) -> list[int]:
        """Slots whose lock nobody holds (their warm_pool died): namespace, veth and directory."""
        removed = []
        for entry in self.slots_dir.iterdir():
            if entry.name.startswith(".claim-") and time.time() - entry.stat().st_mtime > 60:
                shutil.rmtree(entry, ignore_errors=True)  # a claim that died half-made
                continue
            if not entry.name.isdigit() or _held(entry / "owner.json"):
                continue
            netns.destroy_sync(int(entry.name))
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(int(entry.name))
        return removed

    # --- one browser ---------------------------------------------------------------------

    def _claim_slot(self, browser_id: UUID | None) -> tuple[int, int]:
        """A free slot, claimed atomically with its owner file already in it and locked: (slot,
        lock fd). A directory renamed onto an existing slot (never empty) fails."""
        claim = self.slots_dir / f".claim-{uuid.uuid4().hex}"
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
                os.rename(claim, self.slots_dir / str(slot))
            except OSError:  # taken (ENOTEMPTY / EEXIST)
                continue
            return slot, fd
        os.close(fd)
        shutil.rmtree(claim, ignore_errors=True)
        raise netns.NetworkError("every browser network slot is taken (BROWSER_NET_CIDR)")

    def _limits(self, tenant_browsers: int) -> tuple[cgroups.Limits, cgroups.Limits]:
        c = self.config
        browser = cgroups.Limits(memory_bytes=c.browser_memory_mib * 2**20, pids=c.browser_pids,
                                 cpu_weight=c.browser_cpu_weight)
        share = int(_host_memory_bytes() * c.total_memory_fraction * c.tenant_memory_fraction)
        tenant = cgroups.Limits(memory_bytes=min(share, browser.memory_bytes * max(1, tenant_browsers)),
                                pids=c.browser_pids * max(1, tenant_browsers),
                                cpu_weight=min(MAX_CPU_WEIGHT, c.browser_cpu_weight * max(1, tenant_browsers)))
        return browser, tenant

    # --- network namespaces, built ahead --------------------------------------------------

    async def _build_net(self, browser_id: UUID | None) -> _Spare:
        slot, lock = self._claim_slot(browser_id)
        net = netns.BrowserNet(slot, *self.host.addresses(slot))
        blocked = tuple(self.host.all_blocked)
        try:
            await netns.create(net, blocked=list(blocked))
        except BaseException:
            await asyncio.shield(self._drop_net(net.slot, lock))
            raise
        return _Spare(net, lock, blocked)

    async def _drop_net(self, slot: int, lock: int) -> None:
        await netns.destroy(slot)
        shutil.rmtree(self.slots_dir / str(slot), ignore_errors=True)
        os.close(lock)

    def _take_spare(self, browser_id: UUID) -> _Spare | None:
        """A spare namespace made with the filter rules of now (a spare from before the host
        joined a network is dropped), its slot now named for `browser_id`."""
        blocked = tuple(self.host.all_blocked)
        while self._spares:
            spare = self._spares.pop()
            if spare.blocked != blocked:
                asyncio.ensure_future(self._drop_net(spare.net.slot, spare.lock))
                continue
            owner = self.slots_dir / str(spare.net.slot) / "owner.json"
            owner.write_text(json.dumps({"pid": os.getpid(), "browser_id": str(browser_id)}))
            return spare
        return None

    def _refill(self) -> None:
        if self.config.spare_networks > 0 and not self._stopping and (self._filling is None or self._filling.done()):
            self._filling = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        await asyncio.sleep(SPARE_REFILL_DELAY_S)
        while not self._stopping and len(self._spares) < self.config.spare_networks:
            try:
                spare = await self._build_net(None)
            except (OSError, netns.NetworkError) as exc:  # launches build their own meanwhile
                log.warning("building a spare browser network failed", extra={"error": str(exc)[:300]})
                return
            if self._stopping:
                await self._drop_net(spare.net.slot, spare.lock)
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
            await self._drop_net(spare.net.slot, spare.lock)

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

    async def prepare(self, *, browser_id: UUID, tenant_id: UUID, tenant_browsers: int, base: Path,
                      flags: list[str], urgent: bool) -> Prepared:
        spare = self._take_spare(browser_id) or await self._build_net(browser_id)
        self._refill()
        slot = spare.net.slot
        uid = self.config.uid_base + slot
        browser_limits, tenant_limits = self._limits(tenant_browsers)
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
        procs = [str(p) for p in self.cgroups.procs_files(prepared.cgroup)]
        # No chrt: a pool browser's low priority is its cgroup's weight (a thread's scheduling
        # class would count only against the threads of its own group).
        prepared.argv = ["/bin/sh", "-c", JOIN_CGROUPS, "sh", str(len(procs)), *procs,
                         "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                         "--", *self._bwrap(prepared.home_fd, marker=base), self.chromium, *flags,
                         "--user-data-dir=/browser/profile", f"--remote-debugging-port={netns.DEVTOOLS_PORT}",
                         "about:blank"]
        return prepared

    def spawn(self, prepared: Prepared, **popen) -> subprocess.Popen:
        """Start its launch command from the thread inside its network namespace: the command
        is in the namespace from its first instruction, with no nsenter in between. (Blocking:
        call it from a worker thread; it waits its turn for the namespace thread.)"""
        return netns.NS_THREAD.submit(netns.in_netns, prepared.net.path,
                                      lambda: subprocess.Popen(prepared.argv, **popen)).result()

    def _bwrap(self, home_fd: int, *, marker: Path) -> list[str]:
        # The host directory is named on bwrap's command line only (ps, audits, `pgrep -f`): set and
        # unset again, so the browser's environment never holds it.
        args = ["bwrap", "--setenv", "BROWSERFLEET_DIR", str(marker), "--unsetenv", "BROWSERFLEET_DIR", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--hostname", "browser",
                "--ro-bind", "/usr", "/usr", "--tmpfs", "/usr/local",  # what the host installed by hand stays out
                "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
                "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
        for name in ETC_FROM_HOST:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        # The host's font cache: without it fontconfig rescans every font at each launch.
        args += ["--ro-bind-try", "/var/cache/fontconfig", "/var/cache/fontconfig"]
        for name in ("passwd", "group", "hosts", "resolv.conf", "nsswitch.conf"):
            args += ["--ro-bind", str(self.etc_dir / name), f"/etc/{name}"]
        args += ["--bind-fd", str(home_fd), "/browser", "--chdir", "/browser",
                 "--clearenv", "--setenv", "HOME", "/browser", "--setenv", "PATH", "/usr/bin:/bin",
                 "--setenv", "TMPDIR", "/tmp", "--setenv", "XDG_CONFIG_HOME", "/browser/.config",
                 "--setenv", "XDG_CACHE_HOME", "/browser/.cache", "--"]
        return args

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
        await netns.destroy(prepared.slot)
        shutil.rmtree(self.slots_dir / str(prepared.slot), ignore_errors=True)
        if prepared.slot_lock >= 0:
            os.close(prepared.slot_lock)
            prepared.slot_lock = -1


def _held(lock: Path) -> bool:
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


_libc = ctypes.CDLL(None, use_errno=True)
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


def mount_tmpfs(path: Path, *, size_mib: int, uid: int) -> None:
    options = f"size={size_mib}m,nr_inodes={max(4096, size_mib * 64)},mode=0700,uid={uid},gid={uid}".encode()
    if _libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")


def unmount(path: Path) -> None:
    """Detach a browser's filesystem (lazily: a dying process may still hold a file open)."""
    if os.path.ismount(path):
        _libc.umount2(str(path).encode(), MNT_DETACH)


def mounts_under(root: Path) -> list[Path]:
    """Mount points below `root` (browsers' filesystems), deepest first."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")  # octal escapes (\040)
            if point.startswith(prefix):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)
