"""Fixtures of the integration tests: the sessions service alone (with a lease stand-in), warm_pool
as a process, its RPC client, and an S3 server."""
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import pytest_asyncio

from services.warm_pool.adapters.blobs import S3Blobs
from shared.rpc import RpcClient
from tests import infra
from tests.integration.sessions_support import sessions_platform
from tests.integration.warm_pool_process import WarmPool


@pytest.fixture(scope="module")
def sessions_infra(pg_server, mq_server):
    with infra.fresh_database(pg_server) as db_url, infra.fresh_vhost(mq_server) as mq_url:
        yield db_url, mq_url


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def platform(sessions_infra, artifacts_dir):
    """The sessions service alone as a process, with a stand-in for warm_pool's lease RPC that
    launches real Chromium (tests/integration/sessions_support.py)."""
    db_url, mq_url = sessions_infra
    async with sessions_platform(db_url, mq_url, artifacts_dir) as p:
        yield p


@pytest.fixture
def start_pool(fresh_db, fresh_mq, tmp_path, artifacts_dir):
    """`start(**env)` → warm_pool as a running process on this test's database and vhost."""
    started: list[WarmPool] = []

    def start(**env) -> WarmPool:
        wp = WarmPool(db=fresh_db, mq=fresh_mq, root=tmp_path, logs=artifacts_dir, **env)
        started.append(wp)
        return wp.start()

    yield start
    for wp in started:
        wp.service.stop()
        wp.kill_leftovers()


@pytest.fixture
async def rpc(fresh_mq):
    client = RpcClient(fresh_mq)
    await client.connect()
    yield client
    await client.close()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server over real HTTP on loopback; its URL."""
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
