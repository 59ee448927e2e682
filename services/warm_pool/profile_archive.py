"""Browser profiles at rest: a directory packed into a compressed archive, sealed with AES-GCM.

Pure functions (no I/O beyond the directory being packed or filled): the blob store keeps the
sealed bytes, warm_pool's lease and end flows call these.

Sealed blob: b"BFP1" | key id length (1 byte) | key id | 12-byte nonce | ciphertext+tag.
The associated data binds a blob to its profile and version, so a blob copied onto another
profile (or an older version replayed as a newer one) does not open.
"""
import base64
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"BFP1"
# What a profile carries is its state; caches and locks are the browser's business.
SKIP_DIRS = {"Cache", "Code Cache", "GPUCache", "DawnCache", "DawnGraphiteCache", "DawnWebGPUCache",
             "GrShaderCache", "GraphiteDawnCache", "ShaderCache", "Crashpad", "component_crx_cache",
             "Service Worker/CacheStorage", "optimization_guide_model_store", "Safe Browsing"}
SKIP_FILES = {"SingletonLock", "SingletonSocket", "SingletonCookie", "DevToolsActivePort", "lockfile", "LOCK"}


class ArchiveError(Exception):
    pass


class TooLarge(ArchiveError):
    pass


@dataclass(frozen=True)
class KeyRing:
    """Every key that may open a blob; new blobs are sealed with `active`."""
    keys: dict[str, bytes]
    active: str

    @classmethod
    def parse(cls, setting: str) -> "KeyRing":
        """`kid:base64key[,kid:base64key…]`, the first being the one new blobs use (rotation:
        put the new key first and keep the old ones until every profile was saved again)."""
        keys: dict[str, bytes] = {}
        for part in filter(None, (p.strip() for p in setting.split(","))):
            kid, sep, encoded = part.partition(":")
            if not sep or not kid:
                raise ValueError("PROFILE_ENCRYPTION_KEY: expected kid:base64key entries")
            key = base64.b64decode(encoded, validate=True)
            if len(key) != 32:
                raise ValueError(f"PROFILE_ENCRYPTION_KEY: key {kid!r} is not 32 bytes (AES-256)")
            keys[kid] = key
        if not keys:
            raise ValueError("PROFILE_ENCRYPTION_KEY is empty")
        return cls(keys=keys, active=next(iter(keys)))


def seal(plaintext: bytes, *, ring: KeyRing, aad: bytes) -> bytes:
    kid = ring.active.encode()
    nonce = os.urandom(12)
    return MAGIC + bytes([len(kid)]) + kid + nonce + AESGCM(ring.keys[ring.active]).encrypt(nonce, plaintext, aad)


def unseal(blob: bytes, *, ring: KeyRing, aad: bytes) -> bytes:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 1:
        raise ArchiveError("not a sealed profile")
    n = blob[len(MAGIC)]
    kid = blob[len(MAGIC) + 1:len(MAGIC) + 1 + n].decode(errors="replace")
    rest = blob[len(MAGIC) + 1 + n:]
    if kid not in ring.keys:
        raise ArchiveError(f"sealed with key {kid!r}, which PROFILE_ENCRYPTION_KEY no longer holds")
    try:
        return AESGCM(ring.keys[kid]).decrypt(rest[:12], rest[12:], aad)
    except Exception as exc:  # InvalidTag: tampered, or another profile's / version's blob
        raise ArchiveError("the profile archive does not open (tampered or misplaced)") from exc


def aad_for(profile_id: str, version: int) -> bytes:
    return f"browserfleet-profile:{profile_id}:{version}".encode()


def _skipped(relative: Path) -> bool:
    text = relative.as_posix()
    return relative.name in SKIP_FILES or any(text == d or text.startswith(d + "/") or f"/{d}/" in f"/{text}/"
                                              for d in SKIP_DIRS)


# Every step below the profile's folder is opened relative to its parent's fd without following a
# link (the folder is the tenant's, and root resolves a link against the host); O_NONBLOCK: a FIFO
# swapped in after the check must not block the open.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_DEPTH = 64
DEFAULT_MAX_UNPACKED = 2**30


def pack(directory: Path, *, max_bytes: int, max_unpacked: int = DEFAULT_MAX_UNPACKED) -> bytes:
    """The directory's regular files and folders (no links, sockets or caches), gzip'd tar.
    `TooLarge` past `max_bytes` compressed or `max_unpacked` of files (decided from their sizes
    before reading them: a sparse terabyte costs the tenant no space); `ArchiveError` if the
    directory itself is not a folder (a link) or nests deeper than MAX_DEPTH."""
    try:
        root = os.open(directory, DIR_FLAGS)
    except OSError as exc:
        raise ArchiveError("the profile's directory is not a folder of its own") from exc
    out = io.BytesIO()
    walk = _Walk(out, max_bytes=max_bytes, room=max_unpacked)
    try:
        with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
            walk.folder(tar, root, PurePosixPath(), depth=0)
    finally:
        os.close(root)
    data = out.getvalue()
    if len(data) > max_bytes:
        raise TooLarge(f"the profile is over {max_bytes} bytes compressed")
    return data


class _Walk:
    def __init__(self, out: io.BytesIO, *, max_bytes: int, room: int):
        self.out, self.max_bytes, self.room = out, max_bytes, room

    def folder(self, tar: tarfile.TarFile, fd: int, relative: PurePosixPath, *, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ArchiveError(f"the profile nests deeper than {MAX_DEPTH} folders")
        for name in sorted(os.listdir(fd)):
            path = relative / name
            if _skipped(Path(path)):
                continue
            try:
                seen = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(seen.st_mode):
                self._entry(tar, fd, name, path, seen, DIR_FLAGS, depth=depth)
            elif stat.S_ISREG(seen.st_mode):
                self._entry(tar, fd, name, path, seen, FILE_FLAGS, depth=depth)
            # else: a symlink, socket or FIFO the browser (or a tenant) left: never opened

    def _entry(self, tar: tarfile.TarFile, parent: int, name: str, path: PurePosixPath, seen: os.stat_result,
               flags: int, *, depth: int) -> None:
        try:
            fd = os.open(name, flags, dir_fd=parent)
        except OSError:
            return  # swapped for a link (ELOOP) or removed meanwhile
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino) or stat.S_IFMT(st.st_mode) != stat.S_IFMT(seen.st_mode):
                return  # swapped meanwhile
            info = tarfile.TarInfo(path.as_posix())
            info.mode, info.mtime, info.uid, info.gid = stat.S_IMODE(st.st_mode), int(st.st_mtime), 0, 0
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                self.folder(tar, fd, path, depth=depth + 1)
                return
            if st.st_size > self.room:
                raise TooLarge(f"the profile's files are over {self.room} bytes")
            self.room -= st.st_size
            info.size = st.st_size
            try:
                tar.addfile(info, _Capped(fd, self))
            except OSError as exc:  # it shrank while being read
                raise ArchiveError(f"a profile file changed while it was packed: {path.as_posix()!r}") from exc
        finally:
            os.close(fd)

    def check(self) -> None:
        if self.out.tell() > self.max_bytes:
            raise TooLarge(f"the profile is over {self.max_bytes} bytes compressed")


class _Capped:
    """A file's bytes for tarfile, the compressed size checked as they go."""

    def __init__(self, fd: int, walk: _Walk):
        self.fd, self.walk = fd, walk

    def read(self, n: int = 1 << 20) -> bytes:
        self.walk.check()
        return os.read(self.fd, min(n, 1 << 20) if n and n > 0 else 1 << 20)


def unpack(data: bytes, directory: Path, *, max_bytes: int) -> None:
    """Into an empty directory: regular files and folders only, every path inside it, at most
    `max_bytes` unpacked (an archive is the platform's own, but it is checked all the same)."""
    total = 0
    root = directory.resolve()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            target = (root / member.name).resolve()
            if root not in target.parents and target != root:
                raise ArchiveError(f"archive member outside the profile: {member.name!r}")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                total += member.size
                if total > max_bytes:
                    raise TooLarge("the profile unpacks to more than its cap")
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "xb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            else:
                raise ArchiveError(f"archive member is neither file nor folder: {member.name!r}")
