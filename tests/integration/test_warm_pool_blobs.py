"""The profile blob store's two adapters: Postgres (warm_pool's schema) and S3 (moto's server
over real HTTP on loopback)."""
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from services.warm_pool.adapters.blobs import PostgresBlobs, S3Blobs
from shared import db
from tests import infra

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "warm_pool" / "migrations"


@pytest.fixture
async def postgres_blobs(fresh_db):
    await db.migrate(fresh_db, schema="warm_pool", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(fresh_db, schema="warm_pool", max_size=2)
    yield PostgresBlobs(pool)
    await pool.close()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    port = infra.free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def s3_blobs(s3_server):
    bucket = f"bf-{uuid.uuid4().hex[:12]}"
    httpx.put(f"{s3_server}/{bucket}").raise_for_status()
    store = S3Blobs(bucket=bucket, endpoint_url=s3_server, region="us-east-1", access_key="test",
                    secret_key="test")
    yield store
    await store.close()


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
