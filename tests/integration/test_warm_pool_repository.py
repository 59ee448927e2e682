"""warm_pool's repository against real Postgres: the queries whose scope is easy to get wrong."""
import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

import services.warm_pool
from services.warm_pool.repository import Repository
from shared import db

MIGRATIONS = Path(services.warm_pool.__file__).with_name("migrations")


@pytest.fixture
async def repo(fresh_db):
    await db.migrate(fresh_db, schema="warm_pool", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(fresh_db, schema="warm_pool", max_size=2)
    async with pool.acquire() as conn:
        yield Repository(conn)
    await pool.close()


async def browsers(repo: Repository, tenant_id, *, replica_id: str, states: list[str]) -> list[uuid.UUID]:
    ids = []
    for state in states:
        ids.append(uuid.uuid4())
        await repo.insert_browser(browser_id=ids[-1], tenant_id=tenant_id, replica_id=replica_id, owner_pid=1,
                                  host="h")
        await repo.conn.execute("UPDATE browsers SET state = $2 WHERE id = $1", ids[-1], state)
    return ids


async def tenant(repo: Repository) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    await repo.upsert_tenant(tenant_id=tenant_id, plan="professional", prewarm=1, max_concurrent=5, status="active")
    return tenant_id


async def test_own_in_state_never_returns_another_replicas_browsers(repo):
    t = await tenant(repo)
    (mine,) = await browsers(repo, t, replica_id="a", states=["retiring"])
    (theirs,) = await browsers(repo, t, replica_id="b", states=["retiring"])

    assert await repo.own_in_state(replica_id="a", state="retiring") == [mine]
    # A replica id that is not set must not widen the query to every replica's browsers.
    assert await repo.own_in_state(replica_id=None, state="retiring") == []
    assert set(await repo.in_state(state="retiring")) == {mine, theirs}


async def test_prune_dead_deletes_only_rows_dead_past_the_retention_and_counts_them(repo):
    t = await tenant(repo)
    old, recent, live = await browsers(repo, t, replica_id="a", states=["dead", "dead", "idle"])
    await repo.conn.execute("UPDATE browsers SET ended_at = now() - interval '8 days' WHERE id = $1", old)
    await repo.conn.execute("UPDATE browsers SET ended_at = now() - interval '1 day' WHERE id = $1", recent)

    assert await repo.prune_dead(older_than_s=7 * 24 * 3600) == 1

    left = {r["id"] for r in await repo.conn.fetch("SELECT id FROM browsers")}
    assert left == {recent, live}


async def hosts(repo: Repository, tenant_id, *, replica_id: str, count: int) -> list[uuid.UUID]:
    ids = []
    for _ in range(count):
        ids.append(uuid.uuid4())
        await repo.insert_browser(browser_id=ids[-1], tenant_id=tenant_id, replica_id=replica_id, owner_pid=1,
                                  host="h", mode="context")
        await repo.conn.execute("UPDATE browsers SET state = 'hosting', ready_at = clock_timestamp(),"
                                " cdp_ws_url = 'ws://x' WHERE id = $1", ids[-1])
    return ids


async def test_concurrent_context_claims_never_overfill_a_host_nor_give_a_session_two(fresh_db):
    await db.migrate(fresh_db, schema="warm_pool", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(fresh_db, schema="warm_pool", max_size=12)
    try:
        async with pool.acquire() as conn:
            repo = Repository(conn)
            t, other = await tenant(repo), await tenant(repo)
            a, b = await hosts(repo, t, replica_id="r", count=2)
            (theirs,) = await hosts(repo, other, replica_id="r", count=1)
        sessions = [uuid.uuid4() for _ in range(10)]

        async def claim(session_id):
            async with pool.acquire() as conn:
                try:
                    row = await Repository(conn).claim_context(
                        tenant_id=t, replica_id="r", session_id=session_id, per_browser=4, recycle_after=100,
                        max_age_s=3600, warm=True)
                except asyncpg.UniqueViolationError:
                    return "duplicate"
                return row["id"] if row else None

        got = await asyncio.gather(*(claim(s) for s in sessions + sessions[:3]))

        placed_by_session = {}
        for session_id, host in zip(sessions + sessions[:3], got):
            if isinstance(host, uuid.UUID):
                assert session_id not in placed_by_session  # never two contexts for one session
                placed_by_session[session_id] = host
        assert sorted(placed_by_session.values()) == sorted([a] * 4 + [b] * 4)  # full, never beyond
        assert got.count("duplicate") <= 3  # a duplicate that finds no room gets no slot either
        async with pool.acquire() as conn:
            counts = dict(await conn.fetch("SELECT id, active_contexts FROM browsers"))
            placed = await conn.fetch("SELECT browser_id, count(*) FROM contexts GROUP BY browser_id")
        assert counts == {a: 4, b: 4, theirs: 0}  # no slot leaked by the refused duplicates
        assert dict(placed) == {a: 4, b: 4}
    finally:
        await pool.close()


async def test_a_hosts_crash_reports_only_its_running_contexts_and_frees_each_slot_once(repo):
    t = await tenant(repo)
    (host,) = await hosts(repo, t, replica_id="r", count=1)
    running, ending, creating = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for s in (running, ending, creating):
        assert (await repo.claim_context(tenant_id=t, replica_id="r", session_id=s, per_browser=8, recycle_after=100,
                                         max_age_s=3600, warm=True))["id"] == host
    for s in (running, ending):
        assert await repo.context_opened(session_id=s, context_id=f"C-{s}", downloads_path="/browser/downloads/x")
    assert (await repo.context_ending(session_id=ending))["replica_id"] == "r"
    assert await repo.context_ending(session_id=ending) is None  # already ending

    assert await repo.crash_contexts(browser_id=host) == [running]

    assert await repo.context_ended(session_id=ending) is None  # crashed: nothing more to free
    states = dict(await repo.conn.fetch("SELECT session_id, state FROM contexts"))
    assert set(states.values()) == {"crashed"}
