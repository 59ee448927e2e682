"""Two replicas on one database and broker: ends reach the replica holding the websocket,
revocations reach every replica's key cache, and a replica's crash mid-create is refunded."""
import asyncio
import signal

import httpx
import pytest
import pytest_asyncio
import websockets

from tests.integration.sessions_support import ADMIN, LeaseResponder, Platform, bind_event_sink, start_sessions


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def replicas(sessions_infra, artifacts_dir):
    db_url, mq_url = sessions_infra
    lease = LeaseResponder(mq_url)
    await lease.start()
    await bind_event_sink(mq_url)
    a = start_sessions(db_url, mq_url, artifacts_dir, name="sessions-a")
    b = start_sessions(db_url, mq_url, artifacts_dir, name="sessions-b")
    p = Platform(mq_url, [a, b], lease)
    p.b = httpx.AsyncClient(base_url=b.url, timeout=30)
    try:
        yield p
    finally:
        await p.http.aclose()
        await p.b.aclose()
        for service in (a, b):
            service.stop(signal.SIGTERM)
        await lease.stop()


async def test_ending_on_one_replica_closes_the_relay_on_the_other(replicas):
    _, auth = await replicas.tenant()
    session = (await replicas.http.post("/v1/sessions", headers=auth)).json()
    assert session["cdp_url"].startswith(f"ws://127.0.0.1:{replicas.services[0].port}/")
    async with websockets.connect(session["cdp_url"]) as ws:
        await ws.send('{"id": 1, "method": "Browser.getVersion"}')
        await asyncio.wait_for(ws.recv(), 10)
        ended = await replicas.b.post(f"/v1/sessions/{session['id']}/end", headers=auth)
        assert ended.json()["end_reason"] == "client"
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 15)
    assert ws.close_code == 4001


async def test_revoking_a_key_reaches_every_replica(replicas):
    tenant_id, _ = await replicas.tenant()
    key = (await replicas.http.post(f"/v1/admin/tenants/{tenant_id}/api-keys", headers=ADMIN)).json()
    auth = {"Authorization": f"Bearer {key['api_key']}"}
    assert (await replicas.http.get("/v1/usage", headers=auth)).status_code == 200  # cached on A now
    assert (await replicas.b.delete(f"/v1/admin/api-keys/{key['id']}", headers=ADMIN)).status_code == 204

    async def refused():
        return (await replicas.http.get("/v1/usage", headers=auth)).status_code == 401
    await replicas.wait_for(refused, timeout=10)


async def test_a_create_interrupted_by_a_crash_is_refunded(replicas):
    _, auth = await replicas.tenant(credits=2)
    replicas.lease.mode = "silent"
    try:
        pending = asyncio.create_task(replicas.http.post("/v1/sessions", headers=auth))

        async def debited():
            return (await replicas.b.get("/v1/usage", headers=auth)).json()["credits_used"] == 1
        await replicas.wait_for(debited)
        replicas.services[0].kill()  # replica A dies between the debit and the answer
        with pytest.raises(httpx.HTTPError):
            await pending
    finally:
        replicas.lease.mode = "chromium"

    async def refunded():
        usage = (await replicas.b.get("/v1/usage", headers=auth)).json()
        failed = (await replicas.b.get("/v1/sessions?status=failed", headers=auth)).json()["data"]
        return usage["credits_used"] == 0 and len(failed) == 1
    await replicas.wait_for(refunded, timeout=40)
