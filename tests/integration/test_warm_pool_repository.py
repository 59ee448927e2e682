"""warm_pool's repository against real Postgres: the queries whose scope is easy to get wrong."""
import uuid
from pathlib import Path

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
