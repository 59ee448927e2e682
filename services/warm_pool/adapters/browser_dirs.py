"""Each browser's directory under the profile root, `<profile_root>/<browser_id>/`: its profile
(`profile/`; sandboxed, its filesystem `home/` with `home/profile`) and an `owner.json` naming the
warm_pool process that started it and Chromium's pid, so a successor can find and remove what a
crashed replica left behind. Removing a directory, and what dead replicas left, is here.
"""
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Container
from pathlib import Path
from uuid import UUID

from services.warm_pool.adapters.mounts import mounts_under, unmount
from services.warm_pool.profile_archive import unpack


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def singleton_dir(browser_dir: Path) -> list[str]:
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


def remove_dir(path: Path) -> None:
    """`rm -rf`, which follows no link and has no recursion limit (a tenant's tree may be deep)."""
    unmount(path / "home")
    for extra in singleton_dir(path):
        shutil.rmtree(extra, ignore_errors=True)
    for _ in range(3):  # a dying child may still drop a file in while the tree is removed
        subprocess.run(["rm", "-rf", "--", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not path.exists():
            return
        time.sleep(0.05)


async def remove_dir_async(path: Path) -> None:
    """`rm -rf` in a child process: a Python rmtree in a thread holds the GIL for much of a
    profile's ~200 files and stalls the event loop that answers leases."""
    unmount(path / "home")  # a sandboxed browser's own filesystem
    also = singleton_dir(path)
    for _ in range(3):  # a dying child may still drop a file in while the tree is removed
        proc = await asyncio.create_subprocess_exec("rm", "-rf", "--", str(path), *also,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await proc.wait()
        if not path.exists():
            return
        await asyncio.sleep(0.05)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def live_warm_pool(pid: int) -> bool:
    """Is `pid` a live warm_pool process (this one or a sibling replica on this host)?"""
    return pid == os.getpid() or (pid_alive(pid) and "services.warm_pool" in cmdline(pid))


def sweep_mounts(profile_root: Path, *, running: Container[UUID]) -> None:
    """A launch cut short by the stop can leave its browser's filesystem mounted: unmount
    every one under the profile root and remove those browsers' directories (not `running`)."""
    for point in mounts_under(profile_root):
        unmount(point)
        base = point.parent
        with contextlib.suppress(ValueError):
            if base.parent == profile_root and UUID(base.name) not in running:
                remove_dir(base)


def sweep_own_dirs(profile_root: Path) -> None:
    """Directories of this process's browsers still there at the stop (a launch cut off)."""
    for base in profile_root.iterdir() if profile_root.is_dir() else ():
        owner = {}
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads((base / "owner.json").read_text())
        unowned = "owner_pid" not in owner and time.time() - base.stat().st_mtime > 5  # not a sibling's, just made
        if base.is_dir() and (owner.get("owner_pid") == os.getpid() or unowned):
            with contextlib.suppress(ValueError):
                UUID(base.name)
                remove_dir(base)


def remove_orphans(profile_root: Path, *, running: Container[UUID],
                   owner_alive: Callable[[int], bool]) -> list[UUID]:
    """Kill browsers and remove directories under profile_root whose owner process is gone
    (`running`: this process's own browsers)."""
    removed = []
    if not profile_root.is_dir():
        return removed
    for base in profile_root.iterdir():
        if not base.is_dir():
            continue
        try:
            browser_id = UUID(base.name)
        except ValueError:
            continue
        if browser_id in running:
            continue
        owner = {}
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads((base / "owner.json").read_text())
        if owner.get("owner_pid") and owner_alive(int(owner["owner_pid"])):
            continue
        kill_stale(owner.get("pid"), str(base))
        remove_dir(base)
        removed.append(browser_id)
    return removed


def unpack_owned(data: bytes, target: Path, *, max_bytes: int, uid: int | None) -> None:
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
    if pid and pid_alive(pid) and profile_dir in cmdline(pid):
        groups.add(pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and profile_dir in cmdline(int(entry.name)):
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(int(entry.name)))
    for group in groups - {os.getpgrp()}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)

