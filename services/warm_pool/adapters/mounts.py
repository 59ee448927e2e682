"""Each sandboxed browser's own size-capped filesystem (a tmpfs on its directory)."""
import contextlib
import ctypes
import os
from pathlib import Path

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
