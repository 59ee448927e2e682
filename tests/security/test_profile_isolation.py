"""Profiles across tenants and at rest (issue 18), against the four services as deployed.

Tenant B knows the id of tenant A's profile (ids leak: logs, screenshots, a shared script) and
tries to read it, delete it and start a session from it, which would hand B A's logins. Every
profile query of warm_pool names the tenant the API key belongs to, so each answers 404 as for a
profile that does not exist (a naive `WHERE id = $1` would have served all three).

At rest: a marker the page stored in a cookie, local storage and IndexedDB is in the profile's
saved version, yet it appears nowhere in plain text: not in a dump of the whole database (also
not hex-encoded, as bytea dumps are), not in any file under the browsers' root, the downloads
store, /tmp or the services' logs once the session is over. The stored blob opens with the
deployment's key, and holds the marker then.
"""
import base64
import subprocess
import uuid
from pathlib import Path

import asyncpg
import httpx
from playwright.async_api import async_playwright

from services.warm_pool.profile_archive import KeyRing, aad_for, unseal
from services.warm_pool.profiles import decode_archive
from tests import infra
from tests.e2e.platform import bearer, paying_tenant
from tests.helpers import STATE_PAGE, eventually, local_page_server


async def _tenant(deployed):
    _, key = await paying_tenant(deployed)
    return httpx.AsyncClient(base_url=deployed.urls["sessions"], headers=bearer(key), timeout=60)


async def test_another_tenants_profile_is_not_found_for_reads_deletes_and_sessions(deployed):
    a, b = await _tenant(deployed), await _tenant(deployed)
    async with a, b:
        profile = (await a.post("/v1/profiles", json={"name": "a-only"})).json()
        for method, path, body in (("GET", f"/v1/profiles/{profile['id']}", None),
                                   ("DELETE", f"/v1/profiles/{profile['id']}", None),
                                   ("POST", "/v1/sessions", {"profile": {"id": profile["id"]}}),
                                   ("POST", "/v1/sessions", {"profile": {"id": profile["id"], "persist": True}}),
                                   ("POST", "/v1/sessions", {"isolation": "context",
                                                             "profile": {"id": profile["id"]}})):
            r = await b.request(method, path, json=body)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.text)
        assert profile["id"] not in [p["id"] for p in (await b.get("/v1/profiles")).json()["data"]]
        # B's refused creates cost B nothing, and A's profile is whole and free.
        assert (await b.get("/v1/usage")).json()["credits_used"] == 0
        assert (await a.get(f"/v1/profiles/{profile['id']}")).json()["name"] == "a-only"
        s = (await a.post("/v1/sessions", json={"profile": {"id": profile["id"], "persist": True}})).json()
        assert s["profile"]["save"] == "pending"
        await a.post(f"/v1/sessions/{s['id']}/end")


def _files_with(marker: str, roots: list[Path]) -> list[str]:
    existing = [str(r) for r in roots if r.exists()]
    # -z: NUL ends a "line", so a long run of zeros (a sparse file) is many empty lines, not one
    # line grep must hold in memory whole (it gave up on a 1 TiB one, control file unsearched).
    out = subprocess.run(["grep", "-rlsFz", "--binary-files=text", "--devices=skip", marker, *existing],
                         capture_output=True, text=True)
    return out.stdout.splitlines()


async def test_a_profiles_state_is_nowhere_in_plain_text_at_rest(deployed, tmp_path):
    marker = f"atrest{uuid.uuid4().hex}"
    api = await _tenant(deployed)
    async with api:
        profile = (await api.post("/v1/profiles", json={})).json()
        for isolation in ("browser", "context"):
            s = (await api.post("/v1/sessions", json={"isolation": isolation,
                                                     "profile": {"id": profile["id"], "persist": True}})).json()
            with local_page_server(STATE_PAGE) as url:
                async with async_playwright() as pw:
                    browser = await pw.chromium.connect_over_cdp(s["cdp_url"])
                    page = await browser.contexts[0].new_page()
                    await page.goto(url)
                    await page.evaluate("v => window.putState(v)", marker)
                    await page.close()
            await api.post(f"/v1/sessions/{s['id']}/end")

            async def saved():
                view = (await api.get(f"/v1/sessions/{s['id']}")).json()
                return view["profile"]["save"] if view["profile"]["save"] != "pending" else None
            assert await eventually(saved, timeout=60, what="saved") == "saved"

            async def browser_gone():  # the session's browser (or context) and its files removed
                return not _files_with(marker, [deployed.profile_root])
            await eventually(browser_gone, timeout=30, what="the session's browser files removed")

        dump = subprocess.run(["pg_dump", "--data-only", deployed.database_url], capture_output=True, check=True).stdout
        assert marker.encode() not in dump and marker.encode().hex().encode() not in dump
        roots = [deployed.profile_root, Path("/var/lib/browserfleet/downloads"), Path("/tmp"), deployed.logs]
        control = tmp_path / "control.bin"  # the search finds the marker where it is
        control.write_bytes(b"\0binary\0" + marker.encode() + b"\0")
        assert _files_with(marker, roots) == [str(control)]
        control.unlink()
        assert _files_with(marker, roots) == []

        # The marker is stored all the same: sealed, and the deployment's key opens it.
        conn = await asyncpg.connect(deployed.database_url)
        try:
            rows = await conn.fetch("SELECT v.version, b.data FROM warm_pool.profile_versions v"
                                    " JOIN warm_pool.profile_blobs b ON b.key = v.blob_key WHERE v.profile_id = $1",
                                    uuid.UUID(profile["id"]))
        finally:
            await conn.close()
        assert rows
        ring = KeyRing.parse(infra.SECRETS["PROFILE_ENCRYPTION_KEY"])
        for row in rows:
            blob = bytes(row["data"])
            assert blob.startswith(b"BFP1") and marker.encode() not in blob
            archive = decode_archive(unseal(blob, ring=ring, aad=aad_for(profile["id"], row["version"])))
            assert marker in str(archive.state)
        other = KeyRing.parse("other:" + base64.b64encode(b"k" * 32).decode())
        try:
            unseal(bytes(rows[0]["data"]), ring=other, aad=aad_for(profile["id"], rows[0]["version"]))
            raise AssertionError("a blob opened without the deployment's key")
        except Exception as exc:
            assert "no longer holds" in str(exc) or "does not open" in str(exc)
