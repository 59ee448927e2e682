"""What a warm_pool process's sandboxes hold on the host, to prove none of it outlives them."""
import json
import os
import socket
import subprocess
from pathlib import Path

from services.warm_pool.adapters.network_slots import held

STATE_DIR = Path("/run/browserfleet")


def slot_owners() -> dict[int, int]:
    """slot → the warm_pool pid holding it."""
    owners = {}
    for entry in (STATE_DIR / "slots").glob("*"):
        try:
            owners[int(entry.name)] = json.loads((entry / "owner.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
    return owners


def slots_of(pid: int) -> set[int]:
    return {slot for slot, owner in slot_owners().items() if owner == pid}


def cgroup_trees_named(pid: int, own_cgroup_of: int) -> list[Path]:
    """`browserfleet-<pid>` beside the cgroups of a live process (e.g. the test itself, whose
    cgroups the services inherit) — for a warm_pool that is already dead."""
    trees = []
    for line in Path(f"/proc/{own_cgroup_of}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in (controllers.split(",") if controllers else [""]):
            tree = Path("/sys/fs/cgroup") / controller / path.lstrip("/") / f"browserfleet-{pid}"
            if tree.exists():
                trees.append(tree)
    return trees


def nft_table_exists(pid: int) -> bool:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return f"browserfleet_{pid}" in out


def netns_exist(slots: set[int]) -> set[int]:
    names = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    return {s for s in slots if f"browserfleet-{s}" in names}


def links_exist(slots: set[int]) -> set[int]:
    out = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout or "[]")
    names = {link["ifname"] for link in out}
    return {s for s in slots if f"bfh{s}" in names}


def processes_of_uids(uids: set[int]) -> list[str]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            uid = int(next(line for line in text.splitlines() if line.startswith("Uid:")).split()[1])
            if uid in uids:
                state = next(line for line in text.splitlines() if line.startswith("State:")).split()[1]
                ppid = int(next(line for line in text.splitlines() if line.startswith("PPid:")).split()[1])
                if state == "Z" and ppid == 1:
                    continue  # dead, and init's to reap (this machine's init does not; a real one does)
                cmd = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{status.parent.name} ({state}) {cmd[:120]}")
        except (OSError, StopIteration):
            continue
    return found


def leftovers(pid: int, slots: set[int], *, uid_base: int = 2_100_000_000, me: int | None = None) -> dict:
    """Everything the warm_pool `pid` made for the browsers in `slots` that still exists."""
    reused = {slot for slot, owner in slot_owners().items() if owner != pid}  # a newer browser's now
    slots = slots - reused
    left = {
        "cgroups": [str(t) for t in cgroup_trees_named(pid, me or os.getpid())],
        "nft_table": nft_table_exists(pid),
        "slots": sorted(slots & slots_of(pid)),
        "netns": sorted(netns_exist(slots)),
        "veths": sorted(links_exist(slots)),
        "processes": processes_of_uids({uid_base + s for s in slots}),
    }
    return {k: v for k, v in left.items() if v}


def _live_warm_pool(pid: int) -> bool:
    """A live warm_pool, or any live process using the sandbox (a benchmark, a profiling script):
    it holds its owner lock while it lives."""
    if held(STATE_DIR / "owners" / f"{socket.gethostname()}-{pid}.lock"):
        return True
    try:
        return b"services.warm_pool" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stray(*, uid_base: int = 2_100_000_000) -> list[str]:
    """Sandbox pieces on this host whose warm_pool is gone (any run's: none may outlive its owner)."""
    owners = slot_owners()
    live_slots = {slot for slot, pid in owners.items() if _live_warm_pool(pid)}
    problems = [f"slot {slot} of dead warm_pool {pid}" for slot, pid in owners.items() if slot not in live_slots]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout.split()
    problems += [f"nft table {t}" for t in tables
                 if t.startswith("browserfleet_") and t[13:].isdigit() and not _live_warm_pool(int(t[13:]))]
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in (controllers.split(",") if controllers else [""]):
            for tree in (Path("/sys/fs/cgroup") / controller / path.lstrip("/")).glob("browserfleet-*"):
                if tree.name[13:].isdigit() and not _live_warm_pool(int(tree.name[13:])):
                    problems.append(f"cgroup {tree}")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    problems += [f"netns {n}" for n in names if n.startswith("browserfleet-") and n[13:].isdigit()
                 and int(n[13:]) not in live_slots]
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout or "[]")
    problems += [f"veth {l['ifname']}" for l in links if l["ifname"].startswith("bfh")
                 and l["ifname"][3:].isdigit() and int(l["ifname"][3:]) not in live_slots]
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if uid >= uid_base and uid - uid_base not in live_slots:
            text = status.read_text() if status.exists() else ""
            if "State:\tZ" in text and "PPid:\t1\n" in text:
                continue  # dead, and init's to reap
            problems.append(f"process {status.parent.name} of browser uid {uid}")
    return problems
