"""Issue 15, item 6: dashboard sign-ins are server-side, single-use from their link, revocable,
end with the tenant's subscription, and a tenant's live API keys are capped.

Replayed against the sessions service as a process on its own database and vhost.
"""

import asyncpg
import pytest_asyncio

from tests.integration.sessions_support import ADMIN, sessions_platform


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def platform(module_db, module_mq, artifacts_dir):
    async with sessions_platform(module_db, module_mq, artifacts_dir, name="sessions-sign-ins") as p:
        p.database_url = module_db
        yield p


async def _link(platform, tenant_id) -> str:
    r = await platform.http.post(f"/v1/admin/tenants/{tenant_id}/dashboard-links", headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["url"].split("#link=", 1)[1]


async def _sign_in(platform, link: str):
    return await platform.http.post("/v1/dashboard/sign-ins", json={"link": link})


async def _signed_in(platform, tenant_id) -> dict:
    r = await _sign_in(platform, await _link(platform, tenant_id))
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['credential']}"}


async def test_a_used_link_is_refused(platform):
    tenant_id, _ = await platform.tenant()
    link = await _link(platform, tenant_id)
    first = await _sign_in(platform, link)
    assert first.status_code == 200
    again = await _sign_in(platform, link)
    assert again.status_code == 401 and again.json()["error"]["code"] == "unauthorized"
    # The first exchange's sign-in is unaffected.
    auth = {"Authorization": f"Bearer {first.json()['credential']}"}
    assert (await platform.http.get("/v1/usage", headers=auth)).status_code == 200


async def test_a_revoked_sign_in_is_refused(platform):
    tenant_id, _ = await platform.tenant()
    auth = await _signed_in(platform, tenant_id)
    assert (await platform.http.get("/v1/usage", headers=auth)).status_code == 200
    assert (await platform.http.delete("/v1/dashboard/sign-ins/current", headers=auth)).status_code == 204
    refused = await platform.http.get("/v1/usage", headers=auth)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert (await platform.http.delete("/v1/dashboard/sign-ins/current", headers=auth)).status_code == 401


async def test_sign_ins_are_listed_per_tenant_and_revocable_by_id(platform):
    tenant_id, key = await platform.tenant()
    other_id, other_key = await platform.tenant()
    mine, second = await _signed_in(platform, tenant_id), await _signed_in(platform, tenant_id)
    theirs = await _signed_in(platform, other_id)
    listed = (await platform.http.get("/v1/dashboard/sign-ins", headers=mine)).json()["data"]
    assert len(listed) == 2 and [s["current"] for s in listed].count(True) == 1
    assert len((await platform.http.get("/v1/dashboard/sign-ins", headers=key)).json()["data"]) == 2
    their_list = (await platform.http.get("/v1/dashboard/sign-ins", headers=other_key)).json()["data"]
    assert len(their_list) == 1

    # Another tenant's sign-in looks like a missing one; one's own ends at once.
    theirs_by_id = f"/v1/dashboard/sign-ins/{their_list[0]['id']}"
    assert (await platform.http.delete(theirs_by_id, headers=mine)).status_code == 404
    assert (await platform.http.get("/v1/usage", headers=theirs)).status_code == 200
    other = next(s for s in listed if not s["current"])
    assert (await platform.http.delete(f"/v1/dashboard/sign-ins/{other['id']}", headers=mine)).status_code == 204
    assert (await platform.http.get("/v1/usage", headers=second)).status_code == 401
    assert (await platform.http.get("/v1/usage", headers=mine)).status_code == 200

    # An operator sees and ends all of a tenant's sign-ins.
    admin_list = (await platform.http.get(f"/v1/admin/tenants/{tenant_id}/sign-ins", headers=ADMIN)).json()["data"]
    assert [s["id"] for s in admin_list] == [s["id"] for s in listed if s["current"]]
    assert (await platform.http.delete(f"/v1/admin/tenants/{tenant_id}/sign-ins", headers=ADMIN)).status_code == 204
    assert (await platform.http.get("/v1/usage", headers=mine)).status_code == 401
    assert (await platform.http.get("/v1/usage", headers=theirs)).status_code == 200


async def test_a_canceled_tenants_sign_ins_and_links_end(platform):
    tenant_id, _ = await platform.tenant()
    auth = await _signed_in(platform, tenant_id)
    unused_link = await _link(platform, tenant_id)
    assert (await platform.http.get("/v1/usage", headers=auth)).status_code == 200
    await platform.change_subscription(tenant_id, "canceled")

    async def signed_out():
        return (await platform.http.get("/v1/usage", headers=auth)).status_code == 401
    await platform.wait_for(signed_out)
    assert (await _sign_in(platform, unused_link)).status_code == 401


async def test_secrets_are_stored_hashed(platform):
    tenant_id, _ = await platform.tenant()
    link = await _link(platform, tenant_id)
    credential = (await _sign_in(platform, link)).json()["credential"]
    conn = await asyncpg.connect(platform.database_url)
    try:
        rows = [*await conn.fetch("SELECT * FROM sessions.dashboard_links"),
                *await conn.fetch("SELECT * FROM sessions.dashboard_sign_ins")]
    finally:
        await conn.close()
    dump = repr([dict(r) for r in rows])
    assert rows and link not in dump and credential not in dump
    assert link.split("_", 1)[1] not in dump and credential.split("_", 1)[1] not in dump


async def test_the_26th_live_api_key_is_refused(platform):
    tenant_id, auth = await platform.tenant()  # its first key
    created = [await platform.http.post(f"/v1/admin/tenants/{tenant_id}/api-keys", headers=ADMIN) for _ in range(12)]
    created += [await platform.http.post("/v1/api-keys", headers=auth) for _ in range(12)]
    assert [r.status_code for r in created] == [201] * 24
    for refused in (await platform.http.post(f"/v1/admin/tenants/{tenant_id}/api-keys", headers=ADMIN),
                    await platform.http.post("/v1/api-keys", headers=auth)):
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "api_key_limit"
        assert "25" in refused.json()["error"]["message"]
    # Revoking one makes room again.
    assert (await platform.http.delete(f"/v1/api-keys/{created[0].json()['id']}", headers=auth)).status_code == 204
    assert (await platform.http.post("/v1/api-keys", headers=auth)).status_code == 201
