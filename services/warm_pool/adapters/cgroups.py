"""Per-tenant and per-browser resource limits with cgroups, v2 or v1.

Everything is created beneath the cgroup warm_pool itself runs in (a delegated subtree, the way
systemd hands one to a service), never elsewhere in the hierarchy:

    <own>/browserfleet-<pid>/tenant-<tenant_id>/browser-<browser_id>

The tenant group caps what all of a tenant's browsers take together; each browser's group caps
one browser. A browser whose group hit its memory limit is killed whole (v2: memory.oom.group;
v1: the monitor sees the oom_kill counter move and kills the group).
"""
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")


class CgroupError(Exception):
    pass


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int
    cpu_weight: int  # 1..10000, 100 = an even share (cgroup v2 semantics; v1 shares = weight * 1024 / 100)


def shares(weight: int) -> int:
    """v1 cpu.shares for a v2 cpu.weight (100 = 1024, a nice-0 process's)."""
    return max(2, weight * 1024 // 100)


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """{controller: path} from /proc/self/cgroup ("" for the v2 unified hierarchy)."""
    paths = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _mkdir(group: Path) -> bool:
    """True if this call made the group."""
    try:
        group.mkdir()
        return True
    except FileExistsError:
        return False


def _pids(group: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    return []


def _kill_tasks(groups: list[Path], *, keep: int | None = None) -> None:
    """SIGKILL every process of these groups (but `keep`) until none is left (a dying process
    may fork)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [pid for group in groups for pid in _pids(group) if pid != keep]
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _rmdir_tree(path: Path) -> None:
    """Remove a cgroup and its children, deepest first (cgroups are removed with rmdir only)."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


class CgroupsV2:
    version = 2

    def __init__(self, own: Path, name: str):
        self.base = own / name

    def setup(self) -> None:
        """Enable the controllers below our own group. The no-internal-processes rule forbids
        that while our group holds processes, so those first move into a leaf of their own."""
        own = self.base.parent
        available = set((own / "cgroup.controllers").read_text().split())
        missing = {"memory", "pids", "cpu"} - available
        if missing:
            raise CgroupError(f"cgroup v2 controllers not delegated to {own}: {sorted(missing)}")
        enabled = set((own / "cgroup.subtree_control").read_text().split())
        if not {"memory", "pids", "cpu"} <= enabled:
            leaf = own / "service"
            leaf.mkdir(exist_ok=True)
            for pid in _pids(own):
                with contextlib.suppress(ProcessLookupError):
                    _write(leaf / "cgroup.procs", str(pid))
            _write(own / "cgroup.subtree_control", "+memory +pids +cpu")
        self.base.mkdir(exist_ok=True)
        _write(self.base / "cgroup.subtree_control", "+memory +pids +cpu")

    def _group(self, *parts: str) -> Path:
        return self.base.joinpath(*parts)

    def limit_base(self, limits: Limits) -> None:
        _write(self.base / "memory.max", str(limits.memory_bytes))
        _write(self.base / "pids.max", str(limits.pids))

    def create(self, parts: tuple[str, ...], limits: Limits, *, subtree: bool) -> list[Path]:
        group = self._group(*parts)
        if not _mkdir(group) and subtree:
            return [group]  # a tenant's group, made (and limited) by its first browser
        _write(group / "memory.max", str(limits.memory_bytes))
        with contextlib.suppress(OSError):  # no swap accounting on this host
            _write(group / "memory.swap.max", "0")
        _write(group / "pids.max", str(limits.pids))
        _write(group / "cpu.weight", str(limits.cpu_weight))
        if subtree:
            _write(group / "cgroup.subtree_control", "+memory +pids +cpu")
        else:
            _write(group / "memory.oom.group", "1")
        return [group]

    def set_cpu_weight(self, parts: tuple[str, ...], weight: int) -> None:
        """`parts` () is the group of all browsers."""
        _write(self._group(*parts) / "cpu.weight", str(weight))

    def procs_files(self, parts: tuple[str, ...]) -> list[Path]:
        return [self._group(*parts) / "cgroup.procs"]

    def oom_killed(self, parts: tuple[str, ...]) -> bool:
        with contextlib.suppress(OSError):
            for line in (self._group(*parts) / "memory.events").read_text().splitlines():
                key, value = line.split()
                if key == "oom_kill" and int(value) > 0:
                    return True
        return False

    def kill(self, parts: tuple[str, ...]) -> None:
        group = self._group(*parts)
        with contextlib.suppress(OSError):
            _write(group / "cgroup.kill", "1")
        _kill_tasks([group])

    def kill_except(self, parts: tuple[str, ...], keep: int) -> None:
        _kill_tasks([self._group(*parts)], keep=keep)

    def remove(self, parts: tuple[str, ...]) -> None:
        _rmdir_tree(self._group(*parts))

    def remove_empty(self, parts: tuple[str, ...]) -> None:
        with contextlib.suppress(OSError):  # still has browsers
            self._group(*parts).rmdir()

    def memory_current(self, parts: tuple[str, ...]) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self._group(*parts) / "memory.current").read_text())
        return None

    def groups(self) -> list[Path]:
        return [self.base]


class CgroupsV1:
    version = 1

    def __init__(self, own: dict[str, Path], name: str):
        self.bases = {c: own[c] / name for c in V1_CONTROLLERS}

    def setup(self) -> None:
        for controller, base in self.bases.items():
            if not base.parent.is_dir():
                raise CgroupError(f"cgroup v1 controller {controller} is not mounted at {base.parent}")
            base.mkdir(exist_ok=True)
        # Limits below must count children's usage (always on in recent kernels; 0 on old ones).
        with contextlib.suppress(OSError):
            _write(self.bases["memory"] / "memory.use_hierarchy", "1")

    def _group(self, controller: str, parts: tuple[str, ...]) -> Path:
        return self.bases[controller].joinpath(*parts)

    def limit_base(self, limits: Limits) -> None:
        _write(self.bases["memory"] / "memory.limit_in_bytes", str(limits.memory_bytes))
        _write(self.bases["pids"] / "pids.max", str(limits.pids))

    def create(self, parts: tuple[str, ...], limits: Limits, *, subtree: bool) -> list[Path]:
        groups, made = [], False
        for controller in V1_CONTROLLERS:
            group = self._group(controller, parts)
            made = _mkdir(group) or made
            groups.append(group)
        if subtree and not made:
            return groups  # a tenant's group, made (and limited) by its first browser
        memory = self._group("memory", parts)
        _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        with contextlib.suppress(OSError):  # memsw exists only with swap accounting
            _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        _write(self._group("pids", parts) / "pids.max", str(limits.pids))
        self.set_cpu_weight(parts, limits.cpu_weight)
        return groups

    def set_cpu_weight(self, parts: tuple[str, ...], weight: int) -> None:
        """`parts` () is the group of all browsers."""
        _write(self._group("cpu", parts) / "cpu.shares", str(shares(weight)))

    def procs_files(self, parts: tuple[str, ...]) -> list[Path]:
        return [self._group(c, parts) / "cgroup.procs" for c in V1_CONTROLLERS]

    def oom_killed(self, parts: tuple[str, ...]) -> bool:
        with contextlib.suppress(OSError):
            for line in (self._group("memory", parts) / "memory.oom_control").read_text().splitlines():
                key, value = line.split()
                if key == "oom_kill" and int(value) > 0:
                    return True
        return False

    def kill(self, parts: tuple[str, ...]) -> None:
        _kill_tasks([self._group(c, parts) for c in V1_CONTROLLERS])

    def kill_except(self, parts: tuple[str, ...], keep: int) -> None:
        _kill_tasks([self._group("pids", parts)], keep=keep)

    def remove(self, parts: tuple[str, ...]) -> None:
        for controller in V1_CONTROLLERS:
            _rmdir_tree(self._group(controller, parts))

    def remove_empty(self, parts: tuple[str, ...]) -> None:
        for controller in V1_CONTROLLERS:
            with contextlib.suppress(OSError):  # still has browsers
                self._group(controller, parts).rmdir()

    def memory_current(self, parts: tuple[str, ...]) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self._group("memory", parts) / "memory.usage_in_bytes").read_text())
        return None

    def groups(self) -> list[Path]:
        return list(self.bases.values())


def detect(name: str, *, root: Path = ROOT, proc_cgroup: str | None = None) -> CgroupsV1 | CgroupsV2:
    """The hierarchy this process is in: v2 when / is cgroup2 (or its memory controller lives
    there), else v1 with one hierarchy per controller."""
    text = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    own = _own_paths(text)
    v1 = {c: root / c / own[c].lstrip("/") for c in V1_CONTROLLERS if c in own}
    if len(v1) == len(V1_CONTROLLERS):
        return CgroupsV1(v1, name)
    if "" in own and (root / "cgroup.controllers").exists():
        return CgroupsV2(root / own[""].lstrip("/"), name)
    raise CgroupError("no usable cgroup hierarchy: need cgroup v2, or v1 memory, pids and cpu controllers")


def remove_stale(tree: CgroupsV1 | CgroupsV2, *, prefix: str, alive) -> list[str]:
    """Kill and remove the trees of dead warm_pool processes (`<prefix><pid>` beside our own)."""
    removed = []
    for base in tree.groups():
        for sibling in base.parent.glob(prefix + "*"):
            pid = sibling.name[len(prefix):]
            if sibling == base or not pid.isdigit() or alive(int(pid)):
                continue
            leaves = [p for p in sibling.rglob("*") if p.is_dir()] + [sibling]
            _kill_tasks(leaves)
            _rmdir_tree(sibling)
            removed.append(sibling.name)
    return sorted(set(removed))
