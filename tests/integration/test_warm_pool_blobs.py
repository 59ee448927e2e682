"""The profile blob store's two adapters: Postgres (warm_pool's schema) and S3 (moto's server
over real HTTP on loopback)."""
import os
import uuid

import pytest

from services.warm_pool.adapters.blobs import PostgresBlobs
from shared import db
from tests.integration.warm_pool_process import MIGRATIONS


@pytest.fixture
async def postgres_blobs(fresh_db):
    await db.migrate(fresh_db, schema="warm_pool", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(fresh_db, schema="warm_pool", max_size=2)
    yield PostgresBlobs(pool)
    await pool.close()


async def test_postgres_blobs(postgres_blobs):
    await round_trip(postgres_blobs)


async def test_s3_blobs(s3_blobs):
    await round_trip(s3_blobs)


async def round_trip(blobs):
    key = f"{uuid.uuid4()}/{uuid.uuid4()}/1"
    assert await blobs.get(key) is None
    payload = os.urandom(3 * 2**20)  # a few MiB, as a real profile
    await blobs.put(key, payload)
    assert await blobs.get(key) == payload
    await blobs.put(key, b"second")
    assert await blobs.get(key) == b"second"
    other = key[:-1] + "2"
    await blobs.put(other, b"v2")
    await blobs.delete([key, other, "never-there"])
    assert await blobs.get(key) is None and await blobs.get(other) is None
