"""Credits under concurrency and Idempotency-Key, with real HTTP and a real database."""
import asyncio

import asyncpg
import websockets


async def test_100_concurrent_creates_on_10_credits(platform):
    _, auth = await platform.tenant(credits=10, max_concurrent=500)
    platform.lease.mode = "fake"
    try:
        answers = await asyncio.gather(*(platform.http.post("/v1/sessions", headers=auth) for _ in range(100)))
    finally:
        platform.lease.mode = "chromium"
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 10 and codes.count(402) == 90, codes
    assert sorted(r.json()["remaining_credits"] for r in answers if r.status_code == 201) == list(range(10))
    usage = (await platform.http.get("/v1/usage", headers=auth)).json()
    assert usage["credits_used"] == 10 and usage["credits_remaining"] == 0 and usage["sessions_running"] == 10


async def test_idempotency_key_replays_without_a_second_debit(platform):
    _, auth = await platform.tenant(credits=10)
    key = {**auth, "Idempotency-Key": "create-1"}
    first = await platform.http.post("/v1/sessions", json={"timeout_s": 100}, headers=key)
    second = await platform.http.post("/v1/sessions", json={"timeout_s": 100}, headers=key)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    async with websockets.connect(second.json()["cdp_url"]) as ws:  # the replayed URL works
        await ws.send('{"id": 1, "method": "Browser.getVersion"}')
        assert "Chrome" in await asyncio.wait_for(ws.recv(), 10)
    conflict = await platform.http.post("/v1/sessions", json={"timeout_s": 200}, headers=key)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
    usage = (await platform.http.get("/v1/usage", headers=auth)).json()
    assert usage["credits_used"] == 1
    await platform.http.post(f"/v1/sessions/{first.json()['id']}/end", headers=auth)


async def test_concurrent_requests_with_one_idempotency_key_debit_once(platform):
    _, auth = await platform.tenant(credits=10)
    platform.lease.mode = "fake"
    try:
        answers = await asyncio.gather(*(platform.http.post("/v1/sessions", headers={**auth, "Idempotency-Key": "k"})
                                         for _ in range(10)))
    finally:
        platform.lease.mode = "chromium"
    assert {r.status_code for r in answers} == {201}
    assert len({r.json()["id"] for r in answers}) == 1
    assert (await platform.http.get("/v1/usage", headers=auth)).json()["credits_used"] == 1


async def test_idempotency_keys_expire_after_24_hours(platform, sessions_infra):
    _, auth = await platform.tenant(credits=10)
    key = {**auth, "Idempotency-Key": "daily"}
    platform.lease.mode = "fake"
    try:
        first = (await platform.http.post("/v1/sessions", headers=key)).json()
        conn = await asyncpg.connect(sessions_infra[0])
        try:
            await conn.execute("UPDATE sessions.idempotency_keys SET created_at = now() - interval '25 hours'"
                               " WHERE session_id = $1", first["id"])
        finally:
            await conn.close()
        second = (await platform.http.post("/v1/sessions", headers=key)).json()
    finally:
        platform.lease.mode = "chromium"
    assert second["id"] != first["id"]
    assert (await platform.http.get("/v1/usage", headers=auth)).json()["credits_used"] == 2


async def test_a_failed_create_can_be_retried_with_the_same_key(platform):
    _, auth = await platform.tenant(credits=10)
    key = {**auth, "Idempotency-Key": "retry-me"}
    platform.lease.mode = "no_capacity"
    try:
        first = await platform.http.post("/v1/sessions", headers=key)
    finally:
        platform.lease.mode = "fake"
    try:
        second = await platform.http.post("/v1/sessions", headers=key)
        third = await platform.http.post("/v1/sessions", headers=key)
    finally:
        platform.lease.mode = "chromium"
    assert first.status_code == 503 and second.status_code == 201 and third.json() == second.json()
    assert (await platform.http.get("/v1/usage", headers=auth)).json()["credits_used"] == 1
