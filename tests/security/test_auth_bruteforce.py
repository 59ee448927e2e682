"""Issue 15, item 4 (limits): guessing credentials costs the attacker, not the database.

Against sessions as a process with AUTH_FAILURES_MAX=5: failed authentications from one client
address end in 429 with Retry-After; a bad key is checked with a read, never a write; a key just
rejected is rejected again without Postgres, and so is any new guess from a throttled address;
an honest client sharing the address keeps working; near-misses of a valid key cannot make it
fail; admin-token, dashboard sign-in and link guessing are throttled (the right admin token still
goes through); billing throttles the credential of a plan-change checkout the same way.

Whether a request reached Postgres is observed with a lock the test holds on sessions.api_keys:
a request that needs a conflicting lock waits (visible in pg_locks) until the test lets go, so
one answered while the lock is held did not need it. Each test speaks for its own client
addresses through X-Forwarded-For, which uvicorn takes from loopback peers.
"""
import asyncio
import secrets
import signal
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import asyncpg
import httpx
import pytest_asyncio

from tests import infra
from tests.integration.sessions_support import ADMIN, LeaseResponder, Platform, bind_event_sink, start_sessions

LIMIT = 5
WINDOW_S = 3600  # no window ends during the test


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def platform(module_db, module_mq, artifacts_dir):
    lease = LeaseResponder(module_mq)
    lease.mode = "fake"
    await lease.start()
    await bind_event_sink(module_mq)
    # API_KEY_CACHE_S=0: every request with a valid key is looked up, none is served from the cache.
    service = start_sessions(module_db, module_mq, artifacts_dir, name="sessions-auth-bruteforce",
                             auth_failures_max=LIMIT, auth_failure_window_s=WINDOW_S, api_key_cache_s=0)
    # billing checks a checkout's credential with sessions (credentials RPC), under its own limit.
    billing = infra.ServiceProcess("billing", {
        "DATABASE_URL": module_db, "RABBITMQ_URL": module_mq, "HTTP_PORT": str(infra.free_port()),
        "STRIPE_API_BASE": "http://127.0.0.1:9", "LOG_FORMAT": "text", "AUTH_FAILURES_MAX": str(LIMIT),
        "AUTH_FAILURE_WINDOW_S": str(WINDOW_S)}, artifacts_dir)
    billing.log_path = Path(artifacts_dir) / "billing-auth-bruteforce.log"
    p = Platform(module_mq, [service], lease)
    p.db_url, p.billing = module_db, billing
    try:
        billing.start().wait_ready()
        yield p
    finally:
        await p.http.aclose()
        billing.stop(signal.SIGTERM)
        service.stop(signal.SIGTERM)
        await lease.stop()


def _from(address: str, key: str | None = None, admin: str | None = None) -> dict:
    headers = {"x-forwarded-for": address}
    if key or admin:
        headers["authorization"] = f"Bearer {key or admin}"
    return headers


def _guess() -> str:
    return "bf_" + secrets.token_urlsafe(32)


async def _usage(platform, headers: dict):
    return await platform.http.get("/v1/usage", headers=headers)


@asynccontextmanager
async def _locked(db_url: str, mode: str, table: str = "sessions.api_keys"):
    """Hold `LOCK TABLE <table> IN <mode> MODE`; yields `attempt(send)`, which runs one request
    and returns (answer, whether it waited on the lock)."""
    holder, watcher = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    tx = holder.transaction()
    await tx.start()
    await holder.execute(f"LOCK TABLE {table} IN {mode} MODE")
    released = False

    async def attempt(send):
        nonlocal released
        request = asyncio.ensure_future(send())
        while not request.done():
            if await watcher.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::regclass",
                                      table):
                await tx.rollback()  # let it through, and say that it needed the table
                released = True
                return await request, True
            await asyncio.sleep(0.02)
        return request.result(), False

    try:
        yield attempt
    finally:
        if not released:
            await tx.rollback()
        await holder.close()
        await watcher.close()


async def test_failed_attempts_from_one_address_end_in_429_with_retry_after(platform):
    for _ in range(LIMIT):
        r = await _usage(platform, _from("198.51.100.1", _guess()))
        assert r.status_code == 401, r.text
    r = await _usage(platform, _from("198.51.100.1", _guess()))
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited" and set(r.json()["error"]) == {"code", "message"}
    assert 0 < int(r.headers["retry-after"]) <= WINDOW_S
    # Per address: another client is not affected.
    assert (await _usage(platform, _from("198.51.100.2", _guess()))).status_code == 401


async def test_a_bad_key_costs_a_read_not_a_write(platform):
    # SHARE lets reads through and makes any write (UPDATE, INSERT) wait.
    async with _locked(platform.db_url, "SHARE") as attempt:
        r, waited = await attempt(lambda: _usage(platform, _from("198.51.100.10", _guess())))
    assert r.status_code == 401, r.text
    assert not waited, "a failed authentication wrote to sessions.api_keys"


async def test_a_rejected_key_and_a_throttled_address_never_reach_the_database(platform):
    rejected = _guess()
    assert (await _usage(platform, _from("198.51.100.20", rejected))).status_code == 401
    for _ in range(LIMIT - 1):
        assert (await _usage(platform, _from("198.51.100.21", _guess()))).status_code == 401
    # ACCESS EXCLUSIVE makes even a read wait.
    async with _locked(platform.db_url, "ACCESS EXCLUSIVE") as attempt:
        for address in ("198.51.100.20", "198.51.100.22"):  # the rejection is remembered for every address
            r, waited = await attempt(lambda: _usage(platform, _from(address, rejected)))
            assert r.status_code == 401 and not waited, (address, r.status_code, waited)
        # The LIMITth failure of .21 comes from the rejection memory; from then on it is throttled.
        r, waited = await attempt(lambda: _usage(platform, _from("198.51.100.21", rejected)))
        assert r.status_code == 401 and not waited, (r.status_code, waited)
        for _ in range(3):
            r, waited = await attempt(lambda: _usage(platform, _from("198.51.100.21", _guess())))
            assert r.status_code == 429 and not waited, (r.status_code, waited)


async def test_honest_clients_behind_the_guessing_address_keep_working(platform):
    _, auth = await platform.tenant()
    key = auth["Authorization"].removeprefix("Bearer ")
    office = "203.0.113.7"
    assert (await _usage(platform, _from(office, key))).status_code == 200
    for _ in range(LIMIT):
        await _usage(platform, _from(office, _guess()))
    assert (await _usage(platform, _from(office, _guess()))).status_code == 429  # the guesser is stopped
    for _ in range(3):  # every one a database lookup (API_KEY_CACHE_S=0), let through for a key that works
        r = await _usage(platform, _from(office, key))
        assert r.status_code == 200, r.text
    # Succeeding does not wipe the address's failures: the guesser stays stopped.
    assert (await _usage(platform, _from(office, _guess()))).status_code == 429


async def test_near_misses_cannot_make_a_valid_key_fail(platform):
    _, auth = await platform.tenant()
    key = auth["Authorization"].removeprefix("Bearer ")
    misses = [key[:12], key[:-1], key + "x", key[:-1] + ("A" if key[-1] != "A" else "B"), key.upper(),
              key.lower(), key.replace("_", "-"), key[:-2] + key[-1] + key[-2]]
    for i, miss in enumerate(m for m in misses if m != key):
        assert (await _usage(platform, _from(f"192.0.2.{i + 1}", miss))).status_code == 401
        assert (await _usage(platform, _from(f"192.0.2.{i + 1}", miss))).status_code == 401  # from the memory
    for i in range(50):  # and churn the memory with unrelated guesses from many addresses
        await _usage(platform, _from(f"192.0.2.{100 + i}", _guess()))
    r = await _usage(platform, _from("192.0.2.250", key))
    assert r.status_code == 200, r.text


async def test_admin_token_guessing_is_throttled_but_the_operator_is_not(platform):
    operator = "198.51.100.50"
    for _ in range(LIMIT):
        r = await platform.http.get("/v1/admin/tenants", headers=_from(operator, admin=secrets.token_urlsafe(16)))
        assert r.status_code == 401, r.text
    r = await platform.http.get("/v1/admin/tenants", headers=_from(operator, admin=secrets.token_urlsafe(16)))
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text
    r = await platform.http.get("/v1/admin/tenants", headers={**_from(operator), **ADMIN})
    assert r.status_code == 200, r.text


async def test_dashboard_sign_in_and_link_guessing_is_throttled_too(platform):
    # A sign-in credential (bfd_…) and a link (bfl_…) are checked by their own lookups, under the same limit.
    guesser = "198.51.100.60"
    for _ in range(LIMIT):
        r = await _usage(platform, _from(guesser, "bfd_" + secrets.token_urlsafe(32)))
        assert r.status_code == 401, r.text
    async with _locked(platform.db_url, "ACCESS EXCLUSIVE", "sessions.dashboard_sign_ins") as attempt:
        r, waited = await attempt(lambda: _usage(platform, _from(guesser, "bfd_" + secrets.token_urlsafe(32))))
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text
    assert not waited, "a throttled guess was still looked up"
    linker = "198.51.100.61"
    for _ in range(LIMIT):
        r = await platform.http.post("/v1/dashboard/sign-ins", json={"link": "bfl_" + secrets.token_urlsafe(32)},
                                     headers=_from(linker))
        assert r.status_code == 401, r.text
    r = await platform.http.post("/v1/dashboard/sign-ins", json={"link": "bfl_" + secrets.token_urlsafe(32)},
                                 headers=_from(linker))
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text


async def test_checkout_credential_guessing_is_throttled_in_billing(platform):
    # A plan change names a tenant and proves it with that tenant's credential, which billing asks sessions about.
    checkout = f"{platform.billing.url}/v1/checkout-sessions"
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(LIMIT):
            r = await client.post(checkout, json={"plan": "starter", "tenant_id": str(uuid4())},
                                  headers=_from("198.51.100.70", _guess()))
            assert r.status_code == 401, r.text
        r = await client.post(checkout, json={"plan": "starter", "tenant_id": str(uuid4())},
                              headers=_from("198.51.100.70", _guess()))
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text
