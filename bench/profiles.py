"""What a profile adds to a session's start and end, by profile size, in both isolation modes,
side by side with sessions without a profile (issue 18).

`python -m bench.profiles [--runs 3] [--sizes 0,256,2048]` — the four services as processes on a
fresh database and vhost (sandboxed browsers), one tenant. For each mode and size (KiB of
IndexedDB data, random so it does not compress, plus a cookie, a session cookie and a
localStorage item on one origin) a persisting session fills the profile, then, `--runs` times
each, in turn:
- `none`: create and end a session without a profile;
- `read`: create a session with the profile (its state restored; in browser mode a browser
  launched on the profile's directory, against a warm lease for `none`), end it;
- `persist`: create a persisting session, end it, and wait until its save is reported.
Times are client-side medians in ms: `create` is POST /v1/sessions, `end` is POST …/end, and `saved`
is from the end call until the session's `profile.save` is no longer pending (the capture, the
graceful close and pack in browser mode, sealing and writing a version, the event). The machine is
shared with other work: compare columns of one run, not runs.
"""
import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

from tests import infra
from tests.e2e.platform import Platform, bearer, paying_tenant
from tests.helpers import STATE_PAGE, local_page_server

FILL = """async ([marker, kib]) => {
  await window.putState(marker);
  const bytes = new Uint8Array(kib * 1024); for (let i = 0; i < bytes.length; i += 65536)
    crypto.getRandomValues(bytes.subarray(i, Math.min(i + 65536, bytes.length)));
  let text = ""; for (let i = 0; i < bytes.length; i += 8192) text += btoa(String.fromCharCode(...bytes.subarray(i, i + 8192)));
  const d = await new Promise((ok, fail) => { const r = indexedDB.open("bf", 1);
    r.onupgradeneeded = () => r.result.createObjectStore("s"); r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
  await new Promise((ok, fail) => { const t = d.transaction("s", "readwrite"); t.objectStore("s").put(text, "bulk");
    t.oncomplete = ok; t.onerror = () => fail(t.error); });
  d.close(); return text.length;
}"""


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def timed(coro) -> tuple[object, float]:
    started = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - started


async def create(api, **body) -> tuple[dict, float]:
    for _ in range(60):
        r, took = await timed(api.post("/v1/sessions", json=body))
        if r.status_code == 201:
            return r.json(), took
        if r.status_code not in (409, 429, 503):
            raise RuntimeError(r.text)
        await asyncio.sleep(0.5)  # a lock still being released, the pool refilling
    raise RuntimeError("no session")


async def settle(api, session_id: str) -> dict:
    while True:
        view = (await api.get(f"/v1/sessions/{session_id}")).json()
        if view["profile"] is None or view["profile"]["save"] != "pending":
            return view
        await asyncio.sleep(0.05)


async def one(api, kind: str, mode: str, profile_id: str | None) -> dict:
    body = {"isolation": mode}
    if kind != "none":
        body["profile"] = {"id": profile_id, "persist": kind == "persist"}
    session, create_s = await create(api, **body)
    _, end_s = await timed(api.post(f"/v1/sessions/{session['id']}/end"))
    row = {"create": create_s, "end": end_s, "warm": session["warm"]}
    if kind == "persist":
        started = time.perf_counter() - end_s
        view = await settle(api, session["id"])
        row["saved"] = time.perf_counter() - started
        assert view["profile"]["save"] == "saved", view["profile"]
    return row


async def fill(api, mode: str, page_url: str, kib: int) -> tuple[str, int, float]:
    profile = (await api.post("/v1/profiles", json={"name": f"bench-{mode}-{kib}"})).json()
    session, _ = await create(api, isolation=mode, profile={"id": profile["id"], "persist": True})
    async with async_playwright() as pw:
        browser = await pw.chromium.connect_over_cdp(session["cdp_url"])
        page = await browser.contexts[0].new_page()
        await page.goto(page_url)
        await page.evaluate(FILL, ["bench", kib])
        await page.close()
    started = time.perf_counter()
    await api.post(f"/v1/sessions/{session['id']}/end")
    view = await settle(api, session["id"])
    assert view["profile"]["save"] == "saved", view["profile"]
    first_save = time.perf_counter() - started
    size = (await api.get(f"/v1/profiles/{profile['id']}")).json()["size_bytes"]
    return profile["id"], size, first_save


async def measure(platform, args, page_url: str) -> list[dict]:
    _, key = await paying_tenant(platform)
    rows = []
    async with httpx.AsyncClient(base_url=platform.urls["sessions"], headers=bearer(key), timeout=120) as api:
        await asyncio.sleep(5)  # the tenant's pool warm
        for mode in ("browser", "context"):
            for kib in args.sizes:
                profile_id, size, first_save = await fill(api, mode, page_url, kib)
                runs: dict[str, list[dict]] = {"none": [], "read": [], "persist": []}
                for _ in range(args.runs):
                    for kind in runs:
                        runs[kind].append(await one(api, kind, mode, profile_id))
                row = {"mode": mode, "kib": kib, "sealed_bytes": size, "first_save_ms": ms(first_save)}
                for kind, got in runs.items():
                    for field in ("create", "end", "saved"):
                        values = [r[field] for r in got if field in r]
                        if values:
                            row[f"{kind}_{field}_ms"] = ms(statistics.median(values))
                    row[f"{kind}_warm"] = sum(bool(r["warm"]) for r in got)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def report(rows: list[dict], runs: int) -> str:
    head = ("| mode | IndexedDB KiB | sealed | create: none / read / persist (ms) | warm leases of "
            f"{runs}: none / read | end → saved (ms) | first save (ms) |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['kib']} | {r['sealed_bytes'] / 1024:.0f} KiB | "
                     f"{r['none_create_ms']} / {r['read_create_ms']} / {r['persist_create_ms']} | "
                     f"{r['none_warm']} / {r['read_warm']} | {r['persist_saved_ms']} | {r['first_save_ms']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="0,256,2048", help="IndexedDB KiB per profile, comma-separated")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bf-bench-profiles-"))
    with infra.postgres_server() as pg, infra.rabbitmq_server() as mq, \
            infra.fresh_database(pg) as db, infra.fresh_vhost(mq) as vhost, \
            local_page_server(STATE_PAGE) as page_url:
        platform = Platform(db, vhost, workdir, LOG_LEVEL="WARNING").start()
        try:
            rows = asyncio.run(measure(platform, args, page_url))
        finally:
            platform.stop()
    out = Path(__file__).with_name("profiles_results.json")
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(report(rows, args.runs))


if __name__ == "__main__":
    main()
