"""The sandbox every local browser runs in, so one host can serve many tenants.

Per browser: a network namespace of its own (netns.py: the internet and the listed host ports,
nothing else), a uid of its own (never root; Chromium's own sandbox stays on), and bubblewrap
for the rest: a mount namespace where the system is read-only and only the browser's own
directory is writable, private /tmp and /dev/shm, its own PID, IPC and UTS namespaces, an empty
environment. Its processes are in cgroups capping memory, processes and CPU weight, beneath a
tenant cgroup capping what all of that tenant's browsers take together.

The launch command joins the cgroups before anything else runs, then enters the network
namespace, drops to the browser's uid and execs bubblewrap:
    sh (join cgroups) → chrt → nsenter --net → setpriv (uid, no groups, no caps) → bwrap → chromium
"""
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from services.warm_pool.adapters import cgroups, netns
from services.warm_pool.adapters.relays import NamespaceRelays, host_resolvers

log = logging.getLogger(__name__)
TOOLS = ("bwrap", "nsenter", "setpriv", "chrt", "ip", "nft")
ETC_FROM_HOST = ("fonts", "ssl", "ca-certificates", "alternatives", "ld.so.cache", "localtime",
                 "mime.types")
JOIN_CGROUPS = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done; exec "$@"'


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
    tenant_memory_fraction: float = 0.5


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
        self.host = netns.HostNetwork(cidr=config.net_cidr, blocked=config.blocked_networks)
        self.cgroups = None
        self._resolvers = host_resolvers()
        self._cgroup_lock = asyncio.Lock()  # a tenant's group is not removed while a browser joins it

    # --- start and stop ------------------------------------------------------------------

    def start(self, *, alive) -> None:
        """Check the host can sandbox, then set up what all browsers share. `alive(pid)`: is that
        pid a live warm_pool process (whose leftovers must be kept)."""
        if os.geteuid() != 0:
            raise SandboxUnavailable("warm_pool must run as root to build browser sandboxes "
                                     "(network namespaces, cgroups, per-browser users)")
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise SandboxUnavailable(f"missing tools: {', '.join(missing)} (Debian: bubblewrap, util-linux, "
                                     "iproute2, nftables)")
        try:
            self.cgroups = cgroups.detect(f"browserfleet-{os.getpid()}")
            self.cgroups.setup()
        except (OSError, cgroups.CgroupError) as exc:
            raise SandboxUnavailable(f"cannot create cgroups beneath this process's own: {exc}") from exc
        try:
            self.host.setup()
        except (OSError, netns.NetworkError) as exc:
            raise SandboxUnavailable(f"cannot set up browser networking: {exc}") from exc
        self._check_reachable(self.profile_root)
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        self._write_etc()
        self.remove_stale(alive)
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
            "passwd": "root:x:0:0::/:/usr/sbin/nologin\nbrowser:x:{uid}:{uid}::/browser:/usr/sbin/nologin\n",
            "group": "root:x:0:\nbrowser:x:{uid}:\n",
            "hosts": "127.0.0.1 localhost\n::1 localhost\n",
            "resolv.conf": "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n",
            "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
        }
        for name, text in files.items():
            (self.etc_dir / name).write_text(text)

    def stop(self) -> None:
        if self.cgroups is not None:
            for group in self.cgroups.groups():
                cgroups._kill_tasks([p for p in group.rglob("*") if p.is_dir()])
                cgroups._rmdir_tree(group)
        with contextlib.suppress(netns.NetworkError, OSError):
            self.host.teardown()

    def remove_stale(self, alive) -> None:
        """What dead warm_pool processes on this host left: cgroup trees, filter tables, slots."""
        cgroups.remove_stale(self.cgroups, prefix="browserfleet-", alive=alive)
        self.host.remove_stale(alive)
        self.remove_stale_slots(alive)

    def remove_stale_slots(self, alive) -> list[int]:
        removed = []
        for entry in self.slots_dir.iterdir():
            if not entry.name.isdigit():
                continue
            owner = {}
            with contextlib.suppress(OSError, ValueError):
                owner = json.loads((entry / "owner.json").read_text())
            if owner.get("pid") and (owner["pid"] == os.getpid() or alive(int(owner["pid"]))):
                continue
            netns.destroy_sync(int(entry.name))
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(int(entry.name))
        return removed

    # --- one browser ---------------------------------------------------------------------

    def _claim_slot(self, browser_id: UUID) -> int:
        count = self.host.slots
        start = random.randrange(count)
        for i in range(count):
            slot = (start + i) % count
            path = self.slots_dir / str(slot)
            try:
                path.mkdir()
            except FileExistsError:
                continue
            (path / "owner.json").write_text(json.dumps({"pid": os.getpid(), "browser_id": str(browser_id)}))
            return slot
        raise netns.NetworkError("every browser network slot is taken (BROWSER_NET_CIDR)")

    def _limits(self, tenant_browsers: int) -> tuple[cgroups.Limits, cgroups.Limits]:
        c = self.config
        browser = cgroups.Limits(memory_bytes=c.browser_memory_mib * 2**20, pids=c.browser_pids,
                                 cpu_weight=c.browser_cpu_weight)
        share = int(_host_memory_bytes() * c.tenant_memory_fraction)
        tenant = cgroups.Limits(memory_bytes=min(share, browser.memory_bytes * max(1, tenant_browsers)),
                                pids=c.browser_pids * max(1, tenant_browsers), cpu_weight=100)
        return browser, tenant

    async def prepare(self, *, browser_id: UUID, tenant_id: UUID, tenant_browsers: int, base: Path,
                      flags: list[str], urgent: bool) -> Prepared:
        slot = self._claim_slot(browser_id)
        host_ip, ip = self.host.addresses(slot)
        uid = self.config.uid_base + slot
        prepared = Prepared(slot=slot, net=netns.BrowserNet(slot, host_ip, ip), uid=uid, tenant_id=tenant_id,
                            browser_id=browser_id, argv=[], relays=NamespaceRelays())
        try:
            browser_limits, tenant_limits = self._limits(tenant_browsers)
            async with self._cgroup_lock:
                self.cgroups.create(prepared.cgroup[:1], tenant_limits, subtree=True)
                self.cgroups.create(prepared.cgroup, browser_limits, subtree=False)
            base.mkdir(exist_ok=True)
            for sub in ("profile", "downloads"):
                (base / sub).mkdir(exist_ok=True)
            for path in (base, base / "profile", base / "downloads"):
                os.chown(path, uid, uid)
                os.chmod(path, 0o700)
            await netns.create(prepared.net)
            await prepared.relays.open(prepared.net.path, host_ports=self.config.host_ports,
                                       resolvers=self._resolvers)
        except BaseException:
            await self.release(prepared)
            raise
        prepared.home_fd = os.open(base, os.O_PATH | os.O_DIRECTORY)
        procs = [str(p) for p in self.cgroups.procs_files(prepared.cgroup)]
        prepared.argv = ["/bin/sh", "-c", JOIN_CGROUPS, "sh", str(len(procs)), *procs,
                         *([] if urgent else ["chrt", "--idle", "0"]),
                         "nsenter", f"--net={prepared.net.path}", "--",
                         "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                         "--", *self._bwrap(prepared.home_fd, marker=base), self.chromium, *flags,
                         "--user-data-dir=/browser/profile", f"--remote-debugging-port={netns.DEVTOOLS_PORT}",
                         "about:blank"]
        return prepared

    def _bwrap(self, home_fd: int, *, marker: Path) -> list[str]:
        # The host directory is named on bwrap's command line only (ps, audits, `pgrep -f`): set and
        # unset again, so the browser's environment never holds it.
        args = ["bwrap", "--setenv", "BROWSERFLEET_DIR", str(marker), "--unsetenv", "BROWSERFLEET_DIR", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--hostname", "browser",
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
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

    async def release(self, prepared: Prepared) -> None:
        prepared.close_fd()
        await prepared.relays.close()
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.kill, prepared.cgroup)
            async with self._cgroup_lock:
                self.cgroups.remove(prepared.cgroup)
                self.cgroups.remove_empty(prepared.cgroup[:1])
        await netns.destroy(prepared.slot)
        shutil.rmtree(self.slots_dir / str(prepared.slot), ignore_errors=True)
