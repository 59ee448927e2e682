"""The Python SDK as a user gets it: `pip install ./clients/python[playwright]` into a fresh virtualenv,
then a program in that virtualenv drives the running platform through it (issue 19).

The programs (USER_PROGRAM, PROFILE_PROGRAM below) only print what they saw, as JSON; the
assertions are here."""
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests import infra, stripe_fakes
from tests.e2e.platform import WEBHOOK_SECRET, running_platform

pytestmark = pytest.mark.e2e
SDK_SOURCE = infra.ROOT / "clients" / "python"
TINY_PLAN = {"credits": 2, "max_concurrent_sessions": 1, "max_session_seconds": 300, "prewarm_browsers": 1,
             "session_price": "0.01", "minute_price": "0.002", "included_minutes": 5,
             "stripe_price_id": "price_sdk_tiny"}


@pytest.fixture(scope="session")
def sdk_python(tmp_path_factory) -> Path:
    """A virtualenv holding nothing but `browserfleet[playwright]`, installed from a copy of clients/python
    (a copy, so no build/ or egg-info is left in the tree and no stale build/ is packaged)."""
    root = tmp_path_factory.mktemp("sdk-user")
    source = root / "browserfleet-src"
    shutil.copytree(SDK_SOURCE, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{source}[playwright]"],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def wait_for(check, *, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return result


@pytest.fixture(scope="module")
def platform(module_db, module_mq, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sdk-platform")
    plans = json.loads((infra.ROOT / "shared" / "plans.json").read_text())
    plans["sdk_tiny"] = TINY_PLAN
    (workdir / "plans.json").write_text(json.dumps(plans))
    with running_platform(module_db, module_mq, workdir, PLANS_FILE=str(workdir / "plans.json")) as running:
        yield running


def paying_tenant(platform, plan: str, prewarm: int) -> str:
    """A tenant that has paid for `plan`, is provisioned, has at least `prewarm` warm browsers; its new API key."""
    tenant = str(uuid.uuid4())
    customer, subscription = f"cus_{uuid.uuid4().hex[:14]}", f"sub_{uuid.uuid4().hex[:14]}"
    start = datetime.now(timezone.utc).replace(microsecond=0)
    with httpx.Client(timeout=30) as http:
        for event in (stripe_fakes.checkout_session_completed(tenant, plan, customer, subscription),
                      stripe_fakes.invoice_paid(tenant, plan, customer, subscription, int(start.timestamp()),
                                                int((start + timedelta(days=30)).timestamp()))):
            body = json.dumps(event).encode()
            response = http.post(f"{platform.urls['billing']}/webhooks/stripe", content=body,
                                 headers={"stripe-signature": stripe_fakes.sign(body, WEBHOOK_SECRET),
                                          "content-type": "application/json"})
            assert response.status_code == 200, response.text

        def ready():
            known = http.get(f"{platform.urls['sessions']}/v1/admin/tenants/{tenant}", headers=platform.admin)
            pool = http.get(f"{platform.urls['warm_pool']}/v1/pool", headers=platform.admin).json()
            mine = [t for t in pool["tenants"] if t["tenant_id"] == tenant]
            return (known.status_code == 200 and known.json()["provisioned"] and known.json()["credits_remaining"]
                    and mine and mine[0]["idle"] >= prewarm)

        wait_for(ready, what=f"{plan} tenant provisioned with a warm pool")
        key = http.post(f"{platform.urls['sessions']}/v1/admin/tenants/{tenant}/api-keys", headers=platform.admin)
        assert key.status_code == 201, key.text
        return key.json()["api_key"]


USER_PROGRAM = r'''
import asyncio, json, os, socket, sys
from decimal import Decimal

import httpx
from playwright.async_api import async_playwright
from playwright.sync_api import sync_playwright

import browserfleet
from browserfleet import AsyncBrowserfleet, Browserfleet

seen = {"sdk_file": browserfleet.__file__, "version": browserfleet.__version__}
try:
    import shared  # the server's code must not be reachable from here
    seen["server_importable"] = True
except ImportError:
    seen["server_importable"] = False


def error(call):
    try:
        call()
    except browserfleet.APIError as exc:
        return {"type": type(exc).__name__, "status": getattr(exc, "status_code", None),
                "code": getattr(exc, "code", None), "message": exc.message,
                "retry_after": getattr(exc, "retry_after", None)}
    return None


# --- sessions and usage, key and URL from BROWSERFLEET_API_KEY / BROWSERFLEET_BASE_URL -----------
bf = Browserfleet()
created = [bf.sessions.create(timeout_s=120) for _ in range(3)]
seen["created"] = [{"type": type(s).__name__, "status": s.status, "cdp_url": s.cdp_url, "warm": s.warm,
                    "remaining_credits": s.remaining_credits} for s in created]
seen["retrieved"] = [bf.sessions.retrieve(s.id).id == s.id for s in created]
running = bf.sessions.list(status="running", limit=1)
seen["listed_running"] = [s.id for s in running]
seen["pages_of_one"] = sum(1 for _ in running.iter_pages())
seen["created_ids"] = [s.id for s in created]

replay = [bf.sessions.create(timeout_s=120, idempotency_key="order-42") for _ in range(2)]
seen["replayed_same_session"] = replay[0].id == replay[1].id and replay[0].cdp_url == replay[1].cdp_url

ended = [bf.sessions.end(s.id) for s in created + replay[:1]]
again = bf.sessions.end(created[0].id)
seen["ended"] = [{"status": s.status, "cost_is_decimal": isinstance(s.cost, Decimal), "cost": str(s.cost),
                  "duration_ms": s.duration_ms, "end_reason": s.end_reason} for s in ended]
seen["ended_twice_same"] = (again.ended_at, again.cost) == (ended[0].ended_at, ended[0].cost)
seen["running_after_end"] = [s.id for s in bf.sessions.list(status="running")]
usage = bf.usage.retrieve()
seen["usage"] = {"type": type(usage).__name__, "plan": usage.plan, "credits_used": usage.credits_used,
                 "sessions_running": usage.sessions_running}

# --- errors ------------------------------------------------------------------------------------
seen["bad_key"] = error(lambda: Browserfleet(api_key="bf_live_not_a_key").sessions.create())
seen["not_found"] = error(lambda: bf.sessions.retrieve("00000000-0000-4000-8000-000000000000"))
seen["invalid"] = error(lambda: bf.sessions.create(timeout_s=0))
seen["key_reused"] = error(lambda: bf.sessions.create(timeout_s=60, idempotency_key="order-42"))
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    closed_port = s.getsockname()[1]
seen["unreachable"] = error(lambda: Browserfleet(base_url=f"http://127.0.0.1:{closed_port}", max_retries=0).usage.retrieve())

# --- limits: 429 with Retry-After, the retry under the same Idempotency-Key, then 402 --------------
tiny_key = os.environ["TINY_API_KEY"]
tiny_admin = Browserfleet(api_key=tiny_key)
first = tiny_admin.sessions.create()
seen["limited_no_retry"] = error(lambda: tiny_admin.with_options(max_retries=0).sessions.create())
attempts = []

def on_response(response):
    attempts.append((response.status_code, response.request.headers.get("idempotency-key")))
    if response.status_code == 429 and len(attempts) == 1:
        tiny_admin.sessions.end(first.id)  # the limit is lifted while the SDK waits Retry-After

tiny = Browserfleet(api_key=tiny_key, http_client=httpx.Client(event_hooks={"response": [on_response]}))
second = tiny.sessions.create()
seen["limited_then_created"] = {"attempts": [a[0] for a in attempts], "keys": len({a[1] for a in attempts}),
                                "status": second.status}
tiny.sessions.end(second.id)
seen["no_credits"] = error(lambda: tiny.sessions.create())
seen["tiny_usage"] = tiny.usage.retrieve().credits_used

# --- the Playwright helper, sync -----------------------------------------------------------------
with sync_playwright() as p:
    connection = bf.sessions.connect(p, timeout_s=120)
    with connection as browser:
        page = browser.contexts[0].new_page()
        page.set_content("<title>from the sdk</title><p id=x>42</p>")
        seen["sync_page"] = [page.title(), page.text_content("#x")]
        seen["sync_running_inside"] = bf.sessions.retrieve(connection.session.id).status
    seen["sync_after"] = bf.sessions.retrieve(connection.session.id).status

    failing = bf.sessions.connect(p)
    try:
        with failing as browser:
            browser.contexts[0].new_page()
            raise RuntimeError("the user's own error")
    except RuntimeError as exc:
        seen["sync_error_kept"] = str(exc)
    seen["sync_after_error"] = bf.sessions.retrieve(failing.session.id).status


# --- the async client and its helper -------------------------------------------------------------
async def async_part():
    async with AsyncBrowserfleet() as abf:
        s = await abf.sessions.create(timeout_s=120)
        listed = [x.id async for x in abf.sessions.list(status="running", limit=1)]
        done = await abf.sessions.end(s.id)
        out = {"listed": s.id in listed, "ended": done.status, "bad_key": None}
        try:
            await AsyncBrowserfleet(api_key="bf_live_nope").usage.retrieve()
        except browserfleet.AuthenticationError as exc:
            out["bad_key"] = exc.code
        async with async_playwright() as p:
            connection = abf.sessions.connect(p, timeout_s=120)
            async with connection as browser:
                page = await browser.contexts[0].new_page()
                await page.set_content("<title>async sdk</title>")
                out["page"] = await page.title()
            out["after"] = (await abf.sessions.retrieve(connection.session.id)).status
        out["credits_used"] = (await abf.usage.retrieve()).credits_used
        return out

seen["async"] = asyncio.run(async_part())
print(json.dumps(seen))
'''


def test_a_user_drives_the_platform_through_the_installed_sdk(platform, sdk_python, tmp_path):
    key = paying_tenant(platform, "professional", 5)
    tiny_key = paying_tenant(platform, "sdk_tiny", 1)
    program = tmp_path / "user_program.py"
    program.write_text(USER_PROGRAM)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
           "BROWSERFLEET_API_KEY": key, "BROWSERFLEET_BASE_URL": platform.urls["sessions"],
           "TINY_API_KEY": tiny_key}
    run = subprocess.run([str(sdk_python), str(program)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])

    # Installed the way a user installs it: the package from the virtualenv, without the server's code.
    assert seen["sdk_file"].startswith(str(sdk_python.parent.parent)) and not seen["server_importable"]

    assert [c["type"] for c in seen["created"]] == ["SessionCreated"] * 3
    assert {c["status"] for c in seen["created"]} == {"running"}
    assert all(c["cdp_url"].startswith(platform.urls["sessions"].replace("http", "ws")) for c in seen["created"])
    assert [c["remaining_credits"] for c in seen["created"]] == [4999, 4998, 4997]
    assert seen["retrieved"] == [True] * 3
    # limit=1: one session a page, and iterating still yields every running one.
    assert set(seen["listed_running"]) == set(seen["created_ids"]) and seen["pages_of_one"] >= 3

    assert seen["replayed_same_session"]
    assert {e["status"] for e in seen["ended"]} == {"completed"} and all(e["cost_is_decimal"] for e in seen["ended"])
    assert {e["end_reason"] for e in seen["ended"]} == {"client"} and seen["ended_twice_same"]
    assert seen["running_after_end"] == []
    # 4 sessions debited: the create repeated under one Idempotency-Key counted once.
    assert seen["usage"] == {"type": "Usage", "plan": "professional", "credits_used": 4, "sessions_running": 0}

    assert seen["bad_key"] == {"type": "AuthenticationError", "status": 401, "code": "unauthorized",
                               "message": "invalid API key", "retry_after": None}
    assert seen["not_found"]["type"] == "NotFoundError" and seen["not_found"]["code"] == "not_found"
    assert seen["invalid"]["type"] == "UnprocessableEntityError" and seen["invalid"]["code"] == "invalid_request"
    assert seen["key_reused"]["type"] == "ConflictError" and seen["key_reused"]["code"] == "idempotency_conflict"
    assert seen["unreachable"]["type"] == "APIConnectionError" and seen["unreachable"]["status"] is None

    assert seen["limited_no_retry"]["type"] == "RateLimitError"
    assert (seen["limited_no_retry"]["code"], seen["limited_no_retry"]["retry_after"]) == ("concurrency_limit", 5.0)
    assert seen["limited_then_created"] == {"attempts": [429, 201], "keys": 1, "status": "running"}
    assert seen["no_credits"]["type"] == "InsufficientCreditsError"
    assert seen["no_credits"]["code"] == "insufficient_credits"
    assert seen["tiny_usage"] == 2  # first, and the retried create once

    assert seen["sync_page"] == ["from the sdk", "42"] and seen["sync_running_inside"] == "running"
    assert seen["sync_after"] == "completed"
    assert seen["sync_error_kept"] == "the user's own error" and seen["sync_after_error"] == "completed"

    assert seen["async"] == {"listed": True, "ended": "completed", "bad_key": "unauthorized", "page": "async sdk",
                             "after": "completed", "credits_used": 4 + 2 + 2}


STATE_SCRIPT = """<!doctype html><title>sdk state</title><script>
window.putState = (v) => { document.cookie = "kept=" + v + "; path=/; max-age=3600";
                           localStorage.setItem("local", v); return true; };
window.readState = () => ({cookie: document.cookie, local: localStorage.getItem("local")});
</script><a id="get" href="DOWNLOAD_URL">get</a>"""

PROFILE_PROGRAM = r'''
import json, os, sys
from playwright.sync_api import sync_playwright
import browserfleet
from browserfleet import Browserfleet

bf, page_url, marker = Browserfleet(), os.environ["PAGE_URL"], os.environ["MARKER"]
seen = {}
profile = bf.profiles.create(name="sdk-shop")
seen["profile"] = {"type": type(profile).__name__, "name": profile.name, "size_bytes": profile.size_bytes}
seen["listed"] = profile.id in [p.id for p in bf.profiles.list(limit=1)]


def settled(session_id):
    import time
    for _ in range(300):
        s = bf.sessions.retrieve(session_id)
        if s.profile is None or s.profile.save != "pending":
            return s
        time.sleep(0.2)
    raise TimeoutError("the profile's save never settled")


with sync_playwright() as p:
    for isolation in ("context", "browser"):
        connection = bf.sessions.connect(p, isolation=isolation, profile={"id": profile.id, "persist": True})
        with connection as browser:
            try:
                bf.sessions.create(isolation=isolation, profile={"id": profile.id, "persist": True})
                seen[f"{isolation}_second_writer"] = None
            except browserfleet.ConflictError as exc:
                seen[f"{isolation}_second_writer"] = exc.code
            page = browser.contexts[0].new_page()
            page.goto(page_url)
            page.evaluate("v => window.putState(v)", f"{marker}-{isolation}")
            with page.expect_download() as info:
                page.click("#get")
            download = info.value
            seen[f"{isolation}_download_failure"] = download.failure()  # waits for it to finish
        ended = settled(connection.session.id)
        seen[f"{isolation}_save"] = ended.profile.save
        files = bf.sessions.downloads.list(ended.id)
        seen[f"{isolation}_downloads"] = [(f.name, f.size_bytes) for f in files]
        seen[f"{isolation}_bytes"] = bf.sessions.downloads.get(ended.id, files[0].name).decode() if files else None

        reader = bf.sessions.connect(p, isolation=isolation, profile={"id": profile.id})
        with reader as browser:
            page = browser.contexts[0].new_page()
            page.goto(page_url)
            seen[f"{isolation}_restored"] = page.evaluate("() => window.readState()")
        seen[f"{isolation}_reader_save"] = settled(reader.session.id).profile.save

seen["size_after"] = bf.profiles.retrieve(profile.id).size_bytes
bf.profiles.delete(profile.id)
try:
    bf.profiles.retrieve(profile.id)
    seen["after_delete"] = None
except browserfleet.NotFoundError as exc:
    seen["after_delete"] = exc.code
print(json.dumps(seen))
'''


def test_profiles_and_downloads_through_the_installed_sdk(platform, sdk_python, tmp_path):
    """Log in once, come back with the state: a profile saved by a context session and then by a
    browser session, read back by the next session of each; the files their pages downloaded."""
    from tests.helpers import local_download, local_page_server
    key = paying_tenant(platform, "professional", 2)
    marker = f"m{uuid.uuid4().hex[:10]}"
    with local_download(b"the sdk's download", "invoice.txt") as download_url, \
            local_page_server(STATE_SCRIPT.replace("DOWNLOAD_URL", download_url).encode()) as page_url:
        program = tmp_path / "profile_program.py"
        program.write_text(PROFILE_PROGRAM)
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
               "BROWSERFLEET_API_KEY": key, "BROWSERFLEET_BASE_URL": platform.urls["sessions"],
               "PAGE_URL": page_url, "MARKER": marker}
        run = subprocess.run([str(sdk_python), str(program)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["profile"] == {"type": "Profile", "name": "sdk-shop", "size_bytes": 0} and seen["listed"]
    for isolation in ("context", "browser"):
        assert seen[f"{isolation}_second_writer"] == "profile_in_use"
        assert seen[f"{isolation}_download_failure"] is None
        assert seen[f"{isolation}_save"] == "saved"
        assert seen[f"{isolation}_downloads"] == [["invoice.txt", len(b"the sdk's download")]]
        assert seen[f"{isolation}_bytes"] == "the sdk's download"
        restored = seen[f"{isolation}_restored"]
        assert f"kept={marker}-{isolation}" in restored["cookie"] and restored["local"] == f"{marker}-{isolation}"
        assert seen[f"{isolation}_reader_save"] == "not_saved"
    assert seen["size_after"] > 0 and seen["after_delete"] == "not_found"
