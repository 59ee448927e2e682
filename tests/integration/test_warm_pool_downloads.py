"""warm_pool's Downloads against real Postgres and a real store directory: keeping a browser's
sessions' files (its own session, a context host's sessions, the cap across collections), the
RPC's tenant scoping, and the retention sweep (whatever the tenant's state)."""
import os
import time
import uuid
from pathlib import Path

import pytest

import services.warm_pool
from services.warm_pool.downloads import Downloads
from services.warm_pool.repository import Repository
from services.warm_pool.uow import PostgresUnitOfWork
from shared import db
from shared.messages import DownloadsRequest

MIGRATIONS = Path(services.warm_pool.__file__).with_name("migrations")


@pytest.fixture
async def uow(fresh_db):
    await db.migrate(fresh_db, schema="warm_pool", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(fresh_db, schema="warm_pool", max_size=4)
    yield PostgresUnitOfWork(pool)
    await pool.close()


async def a_browser(uow, *, session_id=None, contexts=()) -> tuple[uuid.UUID, uuid.UUID]:
    tenant_id, browser_id = uuid.uuid4(), uuid.uuid4()
    async with uow.begin() as tx:
        repo: Repository = tx.repo
        await repo.upsert_tenant(tenant_id=tenant_id, plan="professional", prewarm=0, max_concurrent=5, status="active")
        await repo.insert_browser(browser_id=browser_id, tenant_id=tenant_id, replica_id="r", owner_pid=1, host="h",
                                  session_id=session_id, mode="context" if contexts else "browser")
        for s in contexts:
            await repo.conn.execute("INSERT INTO contexts (session_id, browser_id, tenant_id, state, warm)"
                                    " VALUES ($1, $2, $3, 'active', true)", s, browser_id, tenant_id)
    return tenant_id, browser_id


def put(home: Path, session_id, name: str, data: bytes) -> None:
    d = home / "downloads" / str(session_id)
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


async def test_a_browsers_session_files_are_kept_and_served_to_its_tenant_only(uow, tmp_path):
    downloads = Downloads(uow, root=tmp_path / "store", max_bytes=100, retention_s=3600)
    session = uuid.uuid4()
    tenant, browser = await a_browser(uow, session_id=session)
    home = tmp_path / "home"
    put(home, session, "a.txt", b"a" * 60)
    put(home, uuid.uuid4(), "not-its.txt", b"x")  # a directory no session of this browser's: left
    await downloads.keep(browser, home)
    put(home, session, "a.txt", b"b" * 30)  # a second collection: unique names, the cap goes on
    put(home, session, "c.txt", b"c" * 50)
    await downloads.keep(browser, home)

    listed = await downloads.serve(DownloadsRequest(op="list", tenant_id=tenant, session_id=session))
    assert [(f.name, f.size_bytes) for f in listed.files] == [("a.txt", 60), ("a (1).txt", 30)]
    read = await downloads.serve(DownloadsRequest(op="read", tenant_id=tenant, session_id=session, name="a (1).txt",
                                                  offset=10, length=5))
    assert read.ok and read.data == b"bbbbb" and read.size_bytes == 30
    other = uuid.uuid4()
    for req in (DownloadsRequest(op="list", tenant_id=other, session_id=session),
                DownloadsRequest(op="read", tenant_id=other, session_id=session, name="a.txt"),
                DownloadsRequest(op="read", tenant_id=tenant, session_id=session, name="c.txt"),  # dropped
                DownloadsRequest(op="read", tenant_id=tenant, session_id=session, name="../a.txt"),
                DownloadsRequest(op="read", tenant_id=tenant, session_id=session, name="a.txt\0")):
        assert (await downloads.serve(req)).error == "not_found", req


async def test_a_context_hosts_sessions_each_keep_their_own(uow, tmp_path):
    downloads = Downloads(uow, root=tmp_path / "store", max_bytes=1000, retention_s=3600)
    one, two = uuid.uuid4(), uuid.uuid4()
    tenant, host = await a_browser(uow, contexts=(one, two))
    home = tmp_path / "home"
    put(home, one, "one.txt", b"1")
    put(home, two, "two.txt", b"2")
    await downloads.keep(host, home, session_id=one)  # a context's end: its files only
    assert (home / "downloads" / str(two) / "two.txt").exists()
    await downloads.keep(host, home)  # the host's end: the rest
    for session, name in ((one, "one.txt"), (two, "two.txt")):
        reply = await downloads.serve(DownloadsRequest(op="list", tenant_id=tenant, session_id=session))
        assert [f.name for f in reply.files] == [name]


async def test_the_sweep_removes_expired_files_rows_and_orphans(uow, tmp_path):
    store = tmp_path / "store"
    keeper = Downloads(uow, root=store, max_bytes=1000, retention_s=0)  # expired at once
    session = uuid.uuid4()
    tenant, browser = await a_browser(uow, session_id=session)
    put(tmp_path / "home", session, "old.txt", b"old")
    await keeper.keep(browser, tmp_path / "home")
    assert (store / str(tenant) / str(session) / "old.txt").exists()
    async with uow.begin() as tx:  # canceled meanwhile: its files expire all the same
        await tx.repo.set_tenant_status(tenant_id=tenant, status="draining")
    orphan = store / str(uuid.uuid4()) / str(uuid.uuid4())  # a collection cut off before it was recorded
    orphan.mkdir(parents=True)
    (orphan / "left.bin").write_bytes(b"x")
    os.utime(orphan, (time.time() - 10, time.time() - 10))
    assert await keeper.sweep() == 1
    assert not (store / str(tenant)).exists() and not orphan.exists()
    reply = await keeper.serve(DownloadsRequest(op="list", tenant_id=tenant, session_id=session))
    assert reply.files == []
    kept = Downloads(uow, root=store, max_bytes=1000, retention_s=3600)
    put(tmp_path / "home", session, "new.txt", b"new")
    await kept.keep(browser, tmp_path / "home")
    assert await kept.sweep() == 0 and (store / str(tenant) / str(session) / "new.txt").exists()
