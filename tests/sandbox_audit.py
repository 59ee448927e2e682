"""What a warm_pool process's sandboxes hold on the host, to prove none of it outlives them."""
import json
import os
import subprocess
from pathlib import Path

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


def processes_of_uids(uids: set[int]) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Uid:") and int(line.split()[1]) in uids:
                    found.append(int(status.parent.name))
        except OSError:
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
