"""The sessions API over real HTTP, with a real database, broker and Chromium."""
from uuid import UUID

import asyncpg


from tests.integration.sessions_support import ADMIN, session_events


async def test_create_get_list_end_and_usage(platform):
    _, auth = await platform.tenant(credits=5)
    r = await platform.http.post("/v1/sessions", json={"timeout_s": 120}, headers=auth)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["status"] == "running" and created["browser"] == "chromium"
    assert created["cdp_url"].startswith(f"ws://127.0.0.1:{platform.services[0].port}/v1/sessions/{created['id']}/cdp?token=")
    assert created["remaining_credits"] == 4
    assert created["expires_at"] and created["created_at"]

    got = (await platform.http.get(f"/v1/sessions/{created['id']}", headers=auth)).json()
    assert got["status"] == "running" and "cdp_url" not in got
    listed = (await platform.http.get("/v1/sessions?status=running", headers=auth)).json()
    assert [s["id"] for s in listed["data"]] == [created["id"]] and listed["next_cursor"] is None
    usage = (await platform.http.get("/v1/usage", headers=auth)).json()
    assert usage["credits_used"] == 1 and usage["credits_remaining"] == 4 and usage["sessions_running"] == 1
    assert usage["plan"] == "professional" and usage["status"] == "active"

    ended = await platform.http.post(f"/v1/sessions/{created['id']}/end", headers=auth)
    assert ended.status_code == 200
    body = ended.json()
    assert body["status"] == "completed" and body["end_reason"] == "client"
    assert body["duration_ms"] >= 0 and body["cost"] == "0.010000"
    again = await platform.http.post(f"/v1/sessions/{created['id']}/end", headers=auth)
    assert again.status_code == 200 and again.json() == body
    usage = (await platform.http.get("/v1/usage", headers=auth)).json()
    assert usage["credits_used"] == 1 and usage["sessions_running"] == 0

    async def published():
        events = [e for e in await session_events(platform.mq_url) if e["session_id"] == created["id"]]
        published.seen += events
        return {e["type"] for e in published.seen} == {"sessions.session_started", "sessions.session_completed"}
    published.seen = []
    await platform.wait_for(published)
    started, completed = sorted(published.seen, key=lambda e: e["type"] != "sessions.session_started")
    assert started["warm"] is False and started["browser_id"]
    assert completed["end_reason"] == "client" and completed["cost"] == "0.010000"
    assert completed["duration_ms"] == body["duration_ms"]


async def test_pagination_and_status_filter(platform):
    platform.lease.mode = "fake"
    try:
        _, auth = await platform.tenant(credits=10)
        ids = [(await platform.http.post("/v1/sessions", headers=auth)).json()["id"] for _ in range(5)]
        await platform.http.post(f"/v1/sessions/{ids[0]}/end", headers=auth)
        seen, cursor = [], None
        while True:
            page = (await platform.http.get("/v1/sessions", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                                            headers=auth)).json()
            seen += [s["id"] for s in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids))
        running = (await platform.http.get("/v1/sessions?status=running", headers=auth)).json()["data"]
        assert {s["id"] for s in running} == set(ids[1:])
        completed = (await platform.http.get("/v1/sessions?status=completed", headers=auth)).json()["data"]
        assert [s["id"] for s in completed] == [ids[0]]
    finally:
        platform.lease.mode = "chromium"


async def test_errors_use_the_json_shape(platform):
    _, auth = await platform.tenant(credits=1, max_concurrent=1)
    assert (await platform.http.post("/v1/sessions")).json()["error"]["code"] == "unauthorized"
    bad_key = await platform.http.post("/v1/sessions", headers={"Authorization": "Bearer bf_live_nope"})
    assert bad_key.status_code == 401
    extra = await platform.http.post("/v1/sessions", json={"browser": "chromium", "gpu": True}, headers=auth)
    assert extra.status_code == 422 and extra.json()["error"]["code"] == "invalid_request"
    assert (await platform.http.post("/v1/sessions", json={"browser": "firefox"}, headers=auth)).status_code == 422

    platform.lease.mode = "fake"
    try:
        first = await platform.http.post("/v1/sessions", headers=auth)
        assert first.status_code == 201
        busy = await platform.http.post("/v1/sessions", headers=auth)
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "concurrency_limit"
        assert int(busy.headers["retry-after"]) > 0
        await platform.http.post(f"/v1/sessions/{first.json()['id']}/end", headers=auth)
        broke = await platform.http.post("/v1/sessions", headers=auth)
        assert broke.status_code == 402 and broke.json()["error"]["code"] == "insufficient_credits"
    finally:
        platform.lease.mode = "chromium"
    missing = await platform.http.get("/v1/sessions/00000000-0000-0000-0000-000000000000", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_no_capacity_refunds_the_credit(platform):
    _, auth = await platform.tenant(credits=3)
    platform.lease.mode = "no_capacity"
    try:
        r = await platform.http.post("/v1/sessions", headers=auth)
    finally:
        platform.lease.mode = "chromium"
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_capacity"
    usage = (await platform.http.get("/v1/usage", headers=auth)).json()
    assert usage["credits_used"] == 0 and usage["credits_remaining"] == 3 and usage["sessions_running"] == 0
    failed = (await platform.http.get("/v1/sessions?status=failed", headers=auth)).json()["data"]
    assert len(failed) == 1


async def test_tenant_must_be_provisioned_and_active(platform):
    tenant_id, auth = await platform.tenant(provisioned=False)
    r = await platform.http.post("/v1/sessions", headers=auth)
    assert r.status_code == 403 and r.json()["error"]["code"] == "subscription_inactive"

    tenant_id, auth = await platform.tenant()
    created = (await platform.http.post("/v1/sessions", headers=auth)).json()
    await platform.change_subscription(tenant_id, "past_due")

    async def refused():
        r = await platform.http.post("/v1/sessions", headers=auth)
        return r.status_code == 403 and r.json()["error"]["code"] == "subscription_inactive"
    await platform.wait_for(refused)
    assert (await platform.http.get(f"/v1/sessions/{created['id']}", headers=auth)).json()["status"] == "running"

    await platform.change_subscription(tenant_id, "canceled")

    async def canceled():
        s = (await platform.http.get(f"/v1/sessions/{created['id']}", headers=auth)).json()
        return s["status"] == "completed" and s["end_reason"] == "canceled"
    await platform.wait_for(canceled)


async def test_tenant_isolation(platform):
    _, auth_a = await platform.tenant()
    _, auth_b = await platform.tenant()
    platform.lease.mode = "fake"
    try:
        created = await platform.http.post("/v1/sessions", headers=auth_b)
    finally:
        platform.lease.mode = "chromium"
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert (await platform.http.get(f"/v1/sessions/{sid}", headers=auth_a)).status_code == 404
    assert (await platform.http.post(f"/v1/sessions/{sid}/end", headers=auth_a)).status_code == 404
    assert (await platform.http.get(f"/v1/sessions/{sid}/screenshot", headers=auth_a)).status_code == 404
    assert (await platform.http.get("/v1/sessions", headers=auth_a)).json()["data"] == []
    assert (await platform.http.get(f"/v1/sessions/{sid}", headers=auth_b)).json()["status"] == "running"


async def test_api_keys_admin_and_revocation(platform, sessions_infra):
    tenant_id, _ = await platform.tenant()
    unknown = await platform.http.post("/v1/admin/tenants/00000000-0000-0000-0000-000000000001/api-keys",
                                       headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert (await platform.http.post(f"/v1/admin/tenants/{tenant_id}/api-keys")).status_code == 401
    assert (await platform.http.post(f"/v1/admin/tenants/{tenant_id}/api-keys",
                                     headers={"Authorization": "Bearer wrong"})).status_code == 401
    created = (await platform.http.post(f"/v1/admin/tenants/{tenant_id}/api-keys", headers=ADMIN)).json()
    assert created["api_key"].startswith("bf_live_")
    auth = {"Authorization": f"Bearer {created['api_key']}"}
    assert (await platform.http.get("/v1/usage", headers=auth)).status_code == 200
    conn = await asyncpg.connect(sessions_infra[0])
    try:
        stored = await conn.fetchrow("SELECT key_hash, last_used_at FROM sessions.api_keys WHERE id = $1",
                                     UUID(created["id"]))
    finally:
        await conn.close()
    assert stored["last_used_at"] is not None and created["api_key"].encode() not in bytes(stored["key_hash"])
    revoked = await platform.http.delete(f"/v1/admin/api-keys/{created['id']}", headers=ADMIN)
    assert revoked.status_code == 204
    assert (await platform.http.get("/v1/usage", headers=auth)).status_code == 401


async def test_openapi_documents_the_api(platform):
    doc = (await platform.http.get("/openapi.json")).json()
    post = doc["paths"]["/v1/sessions"]["post"]
    assert {"201", "401", "402", "403", "422", "429", "503"} <= set(post["responses"])
    assert "/v1/usage" in doc["paths"] and "/v1/sessions/{session_id}/end" in doc["paths"]
