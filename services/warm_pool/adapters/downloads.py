"""The downloads store on the host: `<root>/<tenant_id>/<session_id>/<name>`, written by warm_pool
(root) only, and the collection of a session's files from its browser's tree into it.

The browser's tree (`<home>/downloads/<session_id>`) is the tenant's: its uid owns it and may have
replaced anything in it by a symlink, a FIFO, a hard link, or a file still growing. So nothing is
reached through a path: every step is opened relative to a directory fd with O_NOFOLLOW, only
regular files of the browser's uid with one link are read (checked on the open fd), at most the
session's remaining budget is copied, and names are made plain (`sanitize_name`) before they
touch the store.
"""
import contextlib
import logging
import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the check must not block the open.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_NAME_BYTES = 200
COPY_CHUNK = 1024 * 1024
PARTIAL_SUFFIX = ".crdownload"  # Chromium's name for a download still under way
# Per session, kept or dropped: an empty file costs no byte budget but an inode in the store
# every tenant shares and a row (a CDP client makes hundreds a minute, one tab each).
MAX_FILES = 1000


@dataclass(frozen=True)
class Collected:
    name: str  # as stored (sanitized, unique in the session)
    size_bytes: int
    dropped: str | None = None  # "over_cap" | "incomplete": not stored, recorded only


def sanitize_name(raw: str, taken: set[str]) -> str:
    """A plain file name: no `/` or `\\`, no control or format characters (NUL, newlines, bidi
    overrides), not `.`/`..` or hidden, at most MAX_NAME_BYTES of UTF-8, not in `taken`."""
    text = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = "".join("_" if c in "/\\" or unicodedata.category(c)[0] in "CZ" and c != " " else c
                   for c in unicodedata.normalize("NFC", text))
    text = text.strip(" ").lstrip(".").strip(" ") or "download"
    stem, dot, ext = text.rpartition(".")
    if not dot or not stem or len(ext.encode()) > 20:
        stem, ext = text, ""
    name, n = _fit(stem, ext), 1
    while name in taken:
        name, n = _fit(stem, ext, f" ({n})"), n + 1
    return name


def _fit(stem: str, ext: str, mark: str = "") -> str:
    tail = mark + ("." + ext if ext else "")
    room = MAX_NAME_BYTES - len(tail.encode())
    return stem.encode()[:room].decode(errors="ignore").rstrip(" ") + tail


def sessions_with_files(home: Path) -> list[str]:
    """Names of the non-empty directories in `<home>/downloads` (each a session's), by fd."""
    try:
        home_fd = os.open(home, NOFOLLOW_DIR)
    except OSError:
        return []
    try:
        downloads = os.open("downloads", NOFOLLOW_DIR, dir_fd=home_fd)
    except OSError:
        return []
    finally:
        os.close(home_fd)
    found = []
    try:
        with os.scandir(downloads) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        fd = os.open(entry.name, NOFOLLOW_DIR, dir_fd=downloads)
                        try:
                            if os.listdir(fd):
                                found.append(entry.name)
                        finally:
                            os.close(fd)
    finally:
        os.close(downloads)
    return found


class _Dest:
    """The session's directory in the store, made when its first file is stored."""

    def __init__(self, store: Path, tenant: str, session: str):
        self.store, self.tenant, self.session, self.fd = store, tenant, session, None

    def get(self) -> int:
        if self.fd is None:
            self.fd = _session_dir(self.store, self.tenant, self.session)
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


class _TooBig(Exception):
    pass


def collect(home: Path, session: str, *, store: Path, tenant: str, taken: set[str], budget: int) -> list[Collected]:
    """Move `<home>/downloads/<session>`'s regular files into `<store>/<tenant>/<session>/`
    (copied, then unlinked from the browser's tree), while they fit in `budget` bytes; what was
    kept and what was dropped. Anything that is not a plain file of the browser's is left alone."""
    try:
        home_fd = os.open(home, NOFOLLOW_DIR)
    except OSError:
        return []  # the browser's directory is gone
    fds, dest = [home_fd], _Dest(store, tenant, session)
    try:
        owner = os.fstat(home_fd).st_uid
        try:
            fds.append(os.open("downloads", NOFOLLOW_DIR, dir_fd=home_fd))
            fds.append(os.open(session, NOFOLLOW_DIR, dir_fd=fds[-1]))
        except OSError:  # none, or replaced by a link or a file
            return []
        with os.scandir(fds[-1]) as entries:
            names = sorted(e.name for e in entries)
        out = []
        for name in names:
            if len(taken) >= MAX_FILES:  # `taken`: this session's names so far, kept or dropped
                log.warning("downloads: a session left over %d files; the rest are not kept", MAX_FILES)
                break
            item = _take(fds[-1], name, owner=owner, budget=budget, taken=taken, dest=dest)
            if item is not None:
                out.append(item)
                taken.add(item.name)
                if item.dropped is None:
                    budget -= item.size_bytes
        return out
    finally:
        dest.close()
        for fd in reversed(fds):
            os.close(fd)


def _take(source: int, name: str, *, owner: int, budget: int, taken: set[str], dest: _Dest) -> Collected | None:
    """One entry: what became of it, or None if it is not a file of the browser's (left alone)."""
    try:
        before = os.stat(name, dir_fd=source, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(before.st_mode):  # links, directories, FIFOs, sockets, devices: never opened
        return None
    stored = sanitize_name(name, taken)
    if name.endswith(PARTIAL_SUFFIX):
        return Collected(stored, before.st_size, "incomplete")
    if before.st_size > budget:
        return Collected(stored, before.st_size, "over_cap")
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=source)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino)
                or st.st_uid != owner or st.st_nlink != 1):
            return None  # swapped meanwhile, or a hard link to a file not its own
        try:
            copied = _copy(fd, dest.get(), stored, limit=budget)
        except _TooBig:  # it grew past the budget while being copied
            return Collected(stored, budget + 1, "over_cap")
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=source)
    return Collected(stored, copied)


def _copy(src: int, dest_dir: int, name: str, *, limit: int) -> int:
    """Copy into a new file `name`; _TooBig (and no file) past `limit` bytes."""
    out = os.open(name, WRITE_FLAGS, 0o600, dir_fd=dest_dir)
    total = 0
    try:
        while chunk := os.read(src, COPY_CHUNK):
            total += len(chunk)
            if total > limit:
                raise _TooBig
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
    except BaseException:
        os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dest_dir)
        raise
    os.close(out)
    return total


def _session_dir(store: Path, tenant: str, session: str) -> int:
    """An fd of `<store>/<tenant>/<session>`, made (0700) if missing."""
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(store, NOFOLLOW_DIR)
    try:
        for part in (tenant, session):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=fd)
            nxt = os.open(part, NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_session(store: Path, tenant: str, session: str) -> int | None:
    try:
        fd = os.open(store, NOFOLLOW_DIR)
    except OSError:
        return None
    try:
        for part in (tenant, session):
            nxt = os.open(part, NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except OSError:
        os.close(fd)
        return None


def plain(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def read_chunk(store: Path, tenant: str, session: str, name: str, *, offset: int, length: int) -> tuple[bytes, int] | None:
    """(the bytes at [offset, offset + length), the file's size); None if there is no such file."""
    if not plain(name):
        return None
    directory = _open_session(store, tenant, session)
    if directory is None:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return None
    finally:
        os.close(directory)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return os.pread(fd, length, offset), st.st_size
    finally:
        os.close(fd)


def remove(store: Path, tenant: str, session: str, name: str) -> None:
    """Remove one stored file, and its session's (and tenant's) directory once empty."""
    directory = _open_session(store, tenant, session)
    if directory is None:
        return
    try:
        if plain(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=directory)
        empty = not os.listdir(directory)
    finally:
        os.close(directory)
    if empty:
        with contextlib.suppress(OSError):
            os.rmdir(store / tenant / session)
            os.rmdir(store / tenant)


def session_dirs(store: Path) -> list[tuple[str, str, float]]:
    """(tenant, session, mtime) of every session directory in the store."""
    found = []
    with contextlib.suppress(OSError):
        for tenant in os.scandir(store):
            if tenant.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError), os.scandir(tenant.path) as sessions:
                    for s in sessions:
                        if s.is_dir(follow_symlinks=False):
                            found.append((tenant.name, s.name, s.stat(follow_symlinks=False).st_mtime))
    return found


def remove_session(store: Path, tenant: str, session: str) -> None:
    directory = _open_session(store, tenant, session)
    if directory is None:
        return
    try:
        for name in os.listdir(directory):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=directory)
    finally:
        os.close(directory)
    remove(store, tenant, session, "")
