"""kill -9 of warm_pool in the middle of a profile's save (issue 18): the new version's blob is
written, the profile not yet switched to it. After the restart the previous version is whole (the
next session starts with it), the cut-short save says `failed` on its session, and the next save
works and removes the orphaned blob."""
import uuid

import asyncpg
import httpx
import pytest
from playwright.async_api import async_playwright

from tests.faults.harness import Customer, audit
from tests.helpers import STATE_PAGE, eventually, local_page_server

pytestmark = pytest.mark.faults
POINT = "warm_pool.profile_after_put"


async def _use(session: dict, url: str, script: str, *args):
    async with async_playwright() as pw:
        browser = await pw.chromium.connect_over_cdp(session["cdp_url"])
        page = await browser.contexts[0].new_page()
        await page.goto(url)
        result = await page.evaluate(script, *args)
        await page.close()
        return result


async def _session(customer: Customer, profile_id: str, *, persist: bool) -> dict:
    async def created():
        r = await customer.create(profile={"id": profile_id, "persist": persist})
        assert r.status_code in (201, 503, 409), r.text  # 409 while a cut-short use's lock is swept
        return r.json() if r.status_code == 201 else None
    return await eventually(created, timeout=90, interval=0.5, what="a session with the profile")


async def _settled(customer: Customer, session_id: str) -> dict:
    async def check():
        r = await customer.http.get(f"{customer.p.urls['sessions']}/v1/sessions/{session_id}", headers=customer.auth)
        profile = r.json()["profile"]
        return profile if profile["save"] != "pending" else None
    return await eventually(check, timeout=90, what="the save's outcome")


async def _blob_keys(platform, profile_id: str) -> tuple[set[str], set[str]]:
    conn = await asyncpg.connect(platform.database_url)
    try:
        stored = {r["key"] for r in await conn.fetch("SELECT key FROM warm_pool.profile_blobs WHERE key LIKE $1",
                                                     f"%/{profile_id}/%")}
        recorded = {r["blob_key"] for r in await conn.fetch(
            "SELECT blob_key FROM warm_pool.profile_versions WHERE profile_id = $1", uuid.UUID(profile_id))}
    finally:
        await conn.close()
    return stored, recorded


async def test_kill_9_of_warm_pool_mid_save_keeps_the_previous_version(fault_platform, report):
    row = report("9. kill -9 mid profile save (warm_pool)",
                 f"SIGKILL at `{POINT}`: new version written, not switched to; restart")
    platform = fault_platform()
    first, second, third = (f"v{i}{uuid.uuid4().hex[:10]}" for i in range(3))
    async with httpx.AsyncClient(timeout=60) as http:
        customer = Customer(platform, http)
        await customer.pay()
        await customer.ready()
        profiles = f"{platform.urls['sessions']}/v1/profiles"
        profile = (await http.post(profiles, json={"name": "faults"}, headers=customer.auth)).json()
        with local_page_server(STATE_PAGE) as url:
            s1 = await _session(customer, profile["id"], persist=True)
            await _use(s1, url, "v => window.putState(v)", first)
            await customer.end(s1["id"])
            assert (await _settled(customer, s1["id"]))["save"] == "saved"
            before = (await http.get(f"{profiles}/{profile['id']}", headers=customer.auth)).json()

            platform.restart("warm_pool", crash=POINT)
            await customer.ready(credits=4999)
            s2 = await _session(customer, profile["id"], persist=True)
            await _use(s2, url, "v => window.putState(v)", second)
            await customer.end(s2["id"])
            assert await platform.crashed("warm_pool") == -9
            platform.restart("warm_pool", graceful=False)

            outcome = await _settled(customer, s2["id"])
            assert outcome["save"] == "failed", outcome
            after = (await http.get(f"{profiles}/{profile['id']}", headers=customer.auth)).json()
            assert after["updated_at"] == before["updated_at"] and after["size_bytes"] == before["size_bytes"]
            stored, recorded = await _blob_keys(platform, profile["id"])
            assert len(stored - recorded) == 1  # the cut-short save's blob, not switched to

            s3 = await _session(customer, profile["id"], persist=True)  # the previous version, whole
            state = await _use(s3, url, "() => window.readState()")
            assert state["local"] == first and state["idb"] == first and f"kept={first}" in state["cookie"], state
            await _use(s3, url, "v => window.putState(v)", third)
            await customer.end(s3["id"])
            assert (await _settled(customer, s3["id"]))["save"] == "saved"
            stored, recorded = await _blob_keys(platform, profile["id"])
            assert stored == recorded  # the orphan went with the next save

            s4 = await _session(customer, profile["id"], persist=False)
            state = await _use(s4, url, "() => window.readState()")
            assert state["local"] == third and state["idb"] == third, state
            await customer.end(s4["id"])
        lost, doubled = await audit(platform)
    row.done("previous version intact and used; the cut-short save `failed` on its session; the next save "
             "works and removes the orphaned blob", lost, doubled)
