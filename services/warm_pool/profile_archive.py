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
from pathlib import Path

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


def pack(directory: Path, *, max_bytes: int) -> bytes:
    """The directory's regular files and folders (no links, sockets or caches), gzip'd tar.
    `TooLarge` past `max_bytes` compressed."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if _skipped(relative):
                continue
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                continue  # a symlink or socket the browser (or a tenant) left: never followed
            info = tar.gettarinfo(str(path), arcname=relative.as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():  # O_NOFOLLOW: a file swapped for a link meanwhile is not read
                with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if out.tell() > max_bytes:
                raise TooLarge(f"the profile is over {max_bytes} bytes compressed")
    data = out.getvalue()
    if len(data) > max_bytes:
        raise TooLarge(f"the profile is over {max_bytes} bytes compressed")
    return data


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
