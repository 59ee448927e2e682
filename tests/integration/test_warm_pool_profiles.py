"""warm_pool's profile store and sweeps against real Postgres (and S3 through moto's server):
versions written then switched to, the oldest removed, the size cap, the persist lock under
concurrency, stale locks, and a canceled tenant's profiles deleted after the retention."""
import asyncio
import base64
import os
import uuid

import pytest

from services.warm_pool import profiles as profile_ops
from services.warm_pool.handlers_profiles import ProfileSessions, sweep
from services.warm_pool.profile_archive import KeyRing
from services.warm_pool.profiles import Archive, ProfileStore
from services.warm_pool.uow import PostgresUnitOfWork
from shared import db
from shared.messages import ProfileRequest
from tests.integration.warm_pool_process import MIGRATIONS

RING = KeyRing.parse("t1:" + base64.b64encode(os.urandom(32)).decode())


@pytest.fixture
async def uow(fresh_db):
    await db.migrate(fresh_db, schema="warm_pool", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(fresh_db, schema="warm_pool", max_size=4)
    yield PostgresUnitOfWork(pool)
    await pool.close()


async def tenant(uow) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    async with uow.begin() as tx:
        await tx.repo.upsert_tenant(tenant_id=tenant_id, plan="professional", prewarm=0, max_concurrent=5,
                                    status="active")
    return tenant_id


async def new_profile(uow, store, tenant_id) -> uuid.UUID:
    reply = await profile_ops.request(ProfileRequest(op="create", tenant_id=tenant_id), uow=uow, store=store)
    return reply.profile.id


async def stored_keys(uow) -> set[str]:
    async with uow.connect() as tx:
        return {r["key"] for r in await tx.conn.fetch("SELECT key FROM profile_blobs")}


def store_on(uow, *, blobs=None, max_bytes=2**20, keep=2) -> ProfileStore:
    from services.warm_pool.adapters.blobs import PostgresBlobs
    return ProfileStore(blobs=blobs or PostgresBlobs(uow.db), ring=RING, max_bytes=max_bytes, keep=keep)


async def save(uow, store, tenant_id, profile_id, value: str, directory: bytes | None = None):
    return await store.write(uow, profile_id=profile_id, tenant_id=tenant_id, session_id=uuid.uuid4(),
                             archive=Archive({"cookies": [{"name": "v", "value": value}], "origins": []}, directory),
                             origins=["http://a.test"])


async def current(uow, store, tenant_id, profile_id) -> Archive | None:
    async with uow.connect() as tx:
        row = await tx.repo.get_profile(tenant_id=tenant_id, profile_id=profile_id)
    return await store.load(uow, row)


async def check_versions(uow, store):
    t = await tenant(uow)
    p = await new_profile(uow, store, t)
    assert await current(uow, store, t, p) is None
    for value in ("one", "two", "three"):
        assert (await save(uow, store, t, p, value, directory=b"tar")).outcome == "saved"
    archive = await current(uow, store, t, p)
    assert archive.state["cookies"][0]["value"] == "three" and archive.directory == b"tar"
    async with uow.connect() as tx:
        versions = [r["version"] for r in await tx.conn.fetch(
            "SELECT version FROM profile_versions WHERE profile_id = $1 ORDER BY version", p)]
    assert versions == [2, 3]  # PROFILE_VERSIONS_KEPT = 2
    return t, p


async def test_a_save_is_a_new_version_and_only_the_last_ones_are_kept(uow):
    store = store_on(uow)
    t, p = await check_versions(uow, store)
    assert await stored_keys(uow) == {f"{t}/{p}/2", f"{t}/{p}/3"}
    # Over the cap: nothing written, the previous version stays current.
    small = store_on(uow, max_bytes=200)
    saved = await save(uow, small, t, p, os.urandom(400).hex())  # random: does not compress under the cap
    assert saved.outcome == "failed" and "size cap" in saved.message
    assert (await current(uow, store, t, p)).state["cookies"][0]["value"] == "three"
    # Deleting removes every version's blob, then the rows.
    reply = await profile_ops.request(ProfileRequest(op="delete", tenant_id=t, profile_id=p), uow=uow, store=store)
    assert reply.ok and await stored_keys(uow) == set()
    async with uow.connect() as tx:
        assert await tx.conn.fetchval("SELECT count(*) FROM profiles") == 0


async def test_versions_in_s3(uow, s3_blobs):
    store = store_on(uow, blobs=s3_blobs)
    t, p = await check_versions(uow, store)
    assert await s3_blobs.get(f"{t}/{p}/1") is None and await s3_blobs.get(f"{t}/{p}/3") is not None
    assert (await profile_ops.request(ProfileRequest(op="delete", tenant_id=t, profile_id=p), uow=uow,
                                      store=store)).ok
    assert await s3_blobs.get(f"{t}/{p}/3") is None


async def test_one_persisting_session_gets_the_lock_however_many_ask_at_once(uow):
    store = store_on(uow)
    t = await tenant(uow)
    p = await new_profile(uow, store, t)
    sessions = [uuid.uuid4() for _ in range(8)]

    async def take(session_id):
        async with uow.begin() as tx:
            return await tx.repo.lock_profile_persist(tenant_id=t, profile_id=p, session_id=session_id)
    got = await asyncio.gather(*(take(s) for s in sessions))
    assert sum(got) == 1
    holder = sessions[got.index(True)]
    assert await take(holder)  # its retried lease gets it again
    async with uow.begin() as tx:  # another tenant cannot take it, nor see it
        assert not await tx.repo.lock_profile_persist(tenant_id=uuid.uuid4(), profile_id=p, session_id=uuid.uuid4())


async def test_the_sweep_frees_stale_locks_and_deletes_canceled_tenants_profiles_after_the_retention(uow):
    store = store_on(uow)
    profiles = ProfileSessions(store, state=object())
    canceled, kept, back = await tenant(uow), await tenant(uow), await tenant(uow)
    ids = {t: await new_profile(uow, store, t) for t in (canceled, kept, back)}
    for t, p in ids.items():
        assert (await save(uow, store, t, p, "v")).outcome == "saved"
    # A persisting lease that never started: its lock, with no browser, is stale.
    stale = uuid.uuid4()
    async with uow.begin() as tx:
        assert await tx.repo.lock_profile_persist(tenant_id=kept, profile_id=ids[kept], session_id=stale)
        await tx.repo.insert_profile_use(session_id=stale, profile_id=ids[kept], tenant_id=kept, persist=True,
                                         isolation="browser", version=1)
        await tx.conn.execute("UPDATE profile_uses SET created_at = now() - interval '1 hour'")
        for t in (canceled, back):
            await tx.repo.set_tenant_canceled(tenant_id=t, canceled=True)
        await tx.conn.execute("UPDATE tenants SET canceled_at = now() - interval '2 days' WHERE canceled_at IS NOT NULL")
        await tx.repo.set_tenant_canceled(tenant_id=back, canceled=False)  # subscribed again
    await sweep(uow=uow, profiles=profiles, retention_s=24 * 3600, stale_after_s=60)

    async with uow.connect() as tx:
        left = {r["tenant_id"] for r in await tx.conn.fetch("SELECT tenant_id FROM profiles")}
        holder = await tx.conn.fetchval("SELECT persist_session_id FROM profiles WHERE id = $1", ids[kept])
        event = await tx.conn.fetchval("SELECT body::text FROM outbox WHERE routing_key = 'warm_pool.profile_saved'")
    assert left == {kept, back}
    assert not any(k.startswith(f"{canceled}/") for k in await stored_keys(uow))
    assert holder is None and '"not_saved"' in event and str(stale) in event


async def test_a_version_the_key_ring_cannot_open_refuses_the_lease_and_releases_the_lock(uow):
    from services.warm_pool import handlers_profiles
    from shared.messages import LeaseRequest
    store = store_on(uow)
    t = await tenant(uow)
    p = await new_profile(uow, store, t)
    assert (await save(uow, store, t, p, "v")).outcome == "saved"
    rotated = ProfileStore(blobs=store.blobs, ring=KeyRing.parse("t2:" + base64.b64encode(os.urandom(32)).decode()),
                           max_bytes=store.max_bytes, keep=store.keep)  # the old key dropped from the ring
    req = LeaseRequest(tenant_id=t, session_id=uuid.uuid4(), profile_id=p, persist=True)
    reply = await handlers_profiles.lease(req, pool=None, uow=uow, profiles=ProfileSessions(rotated, state=object()),
                                          plain=None)
    assert not reply.ok and reply.error == "error" and "cannot be opened" in reply.message
    async with uow.connect() as tx:
        assert await tx.conn.fetchval("SELECT persist_session_id FROM profiles WHERE id = $1", p) is None
        assert await tx.conn.fetchval("SELECT count(*) FROM profile_uses") == 0
    other = LeaseRequest(tenant_id=uuid.uuid4(), session_id=uuid.uuid4(), profile_id=p)
    assert (await handlers_profiles.lease(other, pool=None, uow=uow, profiles=ProfileSessions(store, state=object()),
                                          plain=None)).error == "unknown_tenant"
