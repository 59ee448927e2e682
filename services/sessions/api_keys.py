"""API keys: minting one for a tenant (at most a few live), and the lookups every request makes."""
import time
from datetime import datetime, timezone
from uuid import UUID, uuid4

from services.sessions import domain
from services.sessions.ports import UnitOfWork
from shared import http


async def create_api_key(*, uow: UnitOfWork, tenant_id: UUID, max_live: int) -> dict:
    key = domain.new_api_key()
    key_id = uuid4()
    async with uow.begin() as tx:
        # The tenant's row lock serializes its creates: the cap holds under concurrent requests.
        if await tx.repo.get_tenant(tenant_id=tenant_id, for_update=True) is None:
            raise domain.NotFound("tenant not known yet")
        if await tx.repo.count_live_api_keys(tenant_id=tenant_id) >= max_live:
            raise domain.Refused("api_key_limit", f"at most {max_live} live API keys per tenant: revoke one first")
        await tx.repo.insert_api_key(key_id=key_id, tenant_id=tenant_id, key_hash=domain.digest(key),
                                     prefix=key[:12])
    return {"id": str(key_id), "api_key": key}


class ApiKeys:
    """API key lookups; all their state is this replica's own.

    A valid key is cached for `ttl_s`, so a revoked key stops working within seconds. A rejected
    key is remembered for REJECTED_S and refused again without asking Postgres; the memory is
    keyed by the whole key's hash and only Postgres saying "no such live key" puts one there, so
    it cannot be made to refuse a valid key. Failures count against the client's address
    (`shared.http`): once that is throttled (429), only keys that have worked on this replica
    are still looked up, so honest clients sharing the address with a guesser keep working."""

    REJECTED_S = 300
    REMEMBERED = 10_000  # per memory; the oldest entries go first
    TOUCH_EVERY_S = 60  # last_used_at is written at most this often per key and replica

    def __init__(self, uow: UnitOfWork, ttl_s: float):
        self.uow, self.ttl_s = uow, ttl_s
        self._cache: dict[bytes, tuple[float, UUID]] = {}
        self._rejected: dict[bytes, float] = {}
        self._worked: dict[bytes, None] = {}

    async def tenant_for(self, key: str | None) -> UUID:
        if not key:
            raise domain.Refused("unauthorized", "API key required")
        key_hash = domain.digest(key)
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit and hit[0] > now:
            return hit[1]
        if key_hash not in self._worked:
            http.refuse_if_throttled()
        if self._rejected.get(key_hash, 0) > now:
            http.auth_failed()
            raise domain.Refused("unauthorized", "invalid API key")
        async with self.uow.connect() as tx:
            row = await tx.repo.find_api_key(key_hash=key_hash)
            if row is not None and _touch_due(row["last_used_at"], ApiKeys.TOUCH_EVERY_S):
                await tx.repo.touch_api_key(key_id=row["id"])
        if row is None:
            self._cache.pop(key_hash, None)
            self._worked.pop(key_hash, None)
            remember(self._rejected, key_hash, now + self.REJECTED_S)
            http.auth_failed()
            raise domain.Refused("unauthorized", "invalid API key")
        remember(self._cache, key_hash, (now + self.ttl_s, row["tenant_id"]))
        remember(self._worked, key_hash, None)
        return row["tenant_id"]

    async def revoke(self, key_id: UUID) -> None:
        async with self.uow.begin() as tx:
            key_hash = await tx.repo.revoke_api_key(key_id=key_id)
        if key_hash is None:
            raise domain.NotFound("API key not found")
        self._cache.pop(bytes(key_hash), None)


def _touch_due(last_used_at: datetime | None, every_s: float) -> bool:
    return last_used_at is None or (datetime.now(timezone.utc) - last_used_at).total_seconds() > every_s


def remember(memory: dict, key, value) -> None:
    """Insert as the newest entry, dropping the oldest past ApiKeys.REMEMBERED."""
    memory.pop(key, None)
    memory[key] = value
    while len(memory) > ApiKeys.REMEMBERED:
        del memory[next(iter(memory))]
