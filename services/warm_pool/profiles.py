"""Profiles: what the warm_pool.profiles RPC does, and a version's life in the blob store.

A version's plaintext is `Archive`: the storage state (cookies + per-origin local storage and
IndexedDB, as adapters/storage_state.py captures it) and, from a browser-mode session, the
user-data directory (profile_archive.pack). It is compressed, sealed (AES-GCM, bound to the
profile and version) and written under a version number of its own; only then does the profile
switch to it, so a crash mid-save leaves the previous version whole. The last
PROFILE_VERSIONS_KEPT versions are kept.
"""
import base64
import json
import logging
import zlib
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid4

from services.warm_pool.ports import BlobStore, Row, UnitOfWork
from services.warm_pool.profile_archive import ArchiveError, KeyRing, aad_for, seal, unseal
from shared import faults
from shared.messages import ProfileInfo, ProfileReply, ProfileRequest

log = logging.getLogger(__name__)
ARCHIVE_MAGIC = b"BFA1"


@dataclass(frozen=True)
class Archive:
    state: dict  # {"cookies": [...], "origins": [{"origin", "localStorage", "indexedDB"}]}
    directory: bytes | None = None  # gzip'd tar of the user-data directory (browser mode)


def encode_archive(archive: Archive) -> bytes:
    """MAGIC | 8-byte length | zlib(state JSON) | the directory's tar.gz (already compressed)."""
    state = zlib.compress(json.dumps(archive.state, separators=(",", ":")).encode(), 6)
    return ARCHIVE_MAGIC + len(state).to_bytes(8, "big") + state + (archive.directory or b"")


def decode_archive(data: bytes) -> Archive:
    if not data.startswith(ARCHIVE_MAGIC):
        raise ArchiveError("not a profile archive")
    n = int.from_bytes(data[4:12], "big")
    state = json.loads(zlib.decompress(data[12:12 + n]))
    return Archive(state=state, directory=data[12 + n:] or None)


def encode_cursor(created_at: datetime, profile_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{profile_id}".encode()).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[datetime, UUID]:
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    created_at, _, profile_id = raw.partition("|")
    return datetime.fromisoformat(created_at), UUID(profile_id)


def info(row: Row) -> ProfileInfo:
    return ProfileInfo(id=row["id"], name=row["name"], created_at=row["created_at"], updated_at=row["updated_at"],
                       size_bytes=row["size_bytes"], last_session_id=row["last_session_id"])


@dataclass(frozen=True)
class Saved:
    outcome: str  # "saved" | "failed" | "not_saved"
    version: int | None = None
    size_bytes: int | None = None
    message: str | None = None


class ProfileStore:
    """The blob store and key ring, with the rules of versions."""

    def __init__(self, *, blobs: BlobStore | None, ring: KeyRing | None, max_bytes: int, keep: int):
        self.blobs, self.ring, self.max_bytes, self.keep = blobs, ring, max_bytes, keep

    @property
    def available(self) -> bool:
        return self.blobs is not None and self.ring is not None

    async def load(self, uow: UnitOfWork, profile: Row) -> Archive | None:
        """The current version's archive; None if nothing was saved yet."""
        if profile["current_version"] is None:
            return None
        async with uow.connect() as tx:
            version = await tx.repo.profile_version(profile_id=profile["id"], version=profile["current_version"])
        if version is None:
            raise ArchiveError("the profile's current version has no record")
        blob = await self.blobs.get(version["blob_key"])
        if blob is None:
            raise ArchiveError("the profile's current version is missing from the store")
        plain = unseal(blob, ring=self.ring, aad=aad_for(str(profile["id"]), version["version"]))
        return decode_archive(plain)

    async def write(self, uow: UnitOfWork, *, profile_id: UUID, tenant_id: UUID, session_id: UUID,
                    archive: Archive, origins: list[str]) -> Saved:
        """A new version written, then switched to; the oldest beyond `keep` removed."""
        async with uow.connect() as tx:
            version = await tx.repo.reserve_profile_version(profile_id=profile_id)
        if version is None:
            return Saved("not_saved", message="the profile was deleted")
        sealed = seal(encode_archive(archive), ring=self.ring, aad=aad_for(str(profile_id), version))
        if len(sealed) > self.max_bytes:
            return Saved("failed", message=f"the profile is over its size cap ({self.max_bytes // 2**20} MiB "
                                           "compressed): the previous version is kept")
        key = f"{tenant_id}/{profile_id}/{version}"
        await self.blobs.put(key, sealed)
        faults.point("warm_pool.profile_after_put")  # the new version written, the profile not switched to it
        async with uow.begin() as tx:
            old = await tx.repo.switch_profile_version(
                profile_id=profile_id, version=version, blob_key=key, size_bytes=len(sealed),
                key_id=self.ring.active, session_id=session_id, origins=sorted(origins),
                has_directory=archive.directory is not None, keep=self.keep)
        if old is None:  # deleted while it was being saved
            await self.blobs.delete([key])
            return Saved("not_saved", message="the profile was deleted")
        await self.blobs.delete(old)
        return Saved("saved", version=version, size_bytes=len(sealed))

    async def purge_deleted(self, uow: UnitOfWork, *, limit: int = 100) -> int:
        """Deleted profiles: every version's blob, then their rows."""
        async with uow.connect() as tx:
            ids = await tx.repo.deleted_profiles(limit=limit)
        for profile_id in ids:
            async with uow.connect() as tx:
                keys = await tx.repo.profile_blob_keys(profile_id=profile_id)
            if keys and self.blobs is not None:
                await self.blobs.delete(keys)
            async with uow.begin() as tx:
                await tx.repo.purge_profile(profile_id=profile_id)
        return len(ids)


async def request(req: ProfileRequest, *, uow: UnitOfWork, store: ProfileStore) -> ProfileReply:
    """One operation of the warm_pool.profiles RPC, always within the tenant's own profiles."""
    if req.op == "create":
        async with uow.begin() as tx:
            row = await tx.repo.insert_profile(profile_id=uuid4(), tenant_id=req.tenant_id, name=req.name)
        return ProfileReply(ok=True, profile=info(row))
    if req.op == "list":
        try:
            after = decode_cursor(req.cursor) if req.cursor else None
        except (ValueError, UnicodeDecodeError):
            return ProfileReply(ok=False, error="invalid_cursor")
        async with uow.connect() as tx:
            rows = await tx.repo.list_profiles(tenant_id=req.tenant_id, limit=req.limit + 1, after=after)
        page = rows[:req.limit]
        more = len(rows) > req.limit
        return ProfileReply(ok=True, profiles=[info(r) for r in page],
                            next_cursor=encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None)
    if req.profile_id is None:
        return ProfileReply(ok=False, error="not_found")
    if req.op == "get":
        async with uow.connect() as tx:
            row = await tx.repo.get_profile(tenant_id=req.tenant_id, profile_id=req.profile_id)
        return ProfileReply(ok=True, profile=info(row)) if row else ProfileReply(ok=False, error="not_found")
    async with uow.begin() as tx:  # delete
        outcome = await tx.repo.mark_profile_deleted(tenant_id=req.tenant_id, profile_id=req.profile_id)
    if outcome is None:
        return ProfileReply(ok=False, error="not_found")
    if outcome == "in_use":
        return ProfileReply(ok=False, error="profile_in_use")
    await store.purge_deleted(uow)  # its blobs now; a failure here is retried by the sweep
    return ProfileReply(ok=True)
