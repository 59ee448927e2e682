"""Scenario 6: many sessions (FAULTS_SESSIONS, default 1,000) while
browsers are SIGKILLed at random and every service is kill -9'd and restarted mid-run. Afterwards:
0 zombie processes, 0 leftover profile directories, and billing's balance equals the sessions
service's remaining credits for every tenant."""
import asyncio
import os
import random
import signal
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.faults.harness import Customer, Db, audit, no_leaks, profile_dirs
from tests.helpers import eventually

pytestmark = pytest.mark.faults

SESSIONS = int(os.environ.get("FAULTS_SESSIONS", "1000"))
TENANTS, WORKERS = 3, 10
SERVICE_KILLS = ("warm_pool", "sessions", "billing", "provisioner", "sessions", "warm_pool")


async def _one_session(customer: Customer, stats: Counter) -> None:
    """Create (retrying one Idempotency-Key through any outage), hold briefly, end (retrying too)."""
    key = f"soak-{uuid.uuid4()}"
    while True:
        try:
            r = await customer.create(key, idle_timeout_s=120)
        except httpx.TransportError:
            stats["create: connection failed, retried"] += 1
            await asyncio.sleep(1)
            continue
        if r.status_code == 201:
            break
        assert r.status_code in (503, 429, 500), r.text  # 500 = a dependency died mid-request
        assert r.json()["error"]["code"], r.text
        stats[f"create: {r.status_code} {r.json()['error']['code']}, retried"] += 1
        await asyncio.sleep(1)
    session_id = r.json()["id"]
    stats["created"] += 1
    await asyncio.sleep(random.uniform(0.2, 1.5))  # in use: a browser kill may hit it
    while True:
        try:
            ended = await customer.end(session_id)
        except httpx.TransportError:
            await asyncio.sleep(0.5)
            continue
        if ended.status_code == 200:
            stats[f"ended: {ended.json()['end_reason']}"] += 1
            return
        assert ended.status_code >= 500, ended.text
        await asyncio.sleep(0.5)


def _kill_a_browser(platform, pids: list[int]) -> bool:
    """SIGKILL one Chromium main process of ours (checked by its command line: no pid reuse)."""
    random.shuffle(pids)
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(platform.profile_root).encode() in cmd and b"--type=" not in cmd:
            os.kill(pid, signal.SIGKILL)
            return True
    return False


async def test_many_sessions_with_random_crashes(fault_platform, report):
    row = report(f"6. {SESSIONS} sessions, {TENANTS} tenants, random crashes",
                 f"random SIGKILL of browsers (leased and idle) + kill -9 and restart of "
                 f"{', '.join(SERVICE_KILLS)} during the run")
    platform = fault_platform()
    stats: Counter = Counter()
    limits = httpx.Limits(max_connections=WORKERS * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        customers = [Customer(platform, http) for _ in range(TENANTS)]
        for customer in customers:
            await customer.pay()
        for customer in customers:
            await customer.ready()

        queue: asyncio.Queue = asyncio.Queue()
        for i in range(SESSIONS):
            queue.put_nowait(customers[i % TENANTS])

        async def worker():
            while not queue.empty():
                await _one_session(queue.get_nowait(), stats)

        async def chaos(db: Db):
            kills = list(SERVICE_KILLS)
            every = max(SESSIONS // (len(kills) + 1), 1)
            while not queue.empty():
                await asyncio.sleep(random.uniform(1.0, 2.5))
                state = "leased" if random.random() < 0.7 else "idle"
                rows = await db.conn.fetch("SELECT pid FROM warm_pool.browsers WHERE state = $1"
                                           " AND pid IS NOT NULL", state)
                if rows and _kill_a_browser(platform, [r["pid"] for r in rows]):
                    stats[f"{state} browsers SIGKILLed"] += 1
                if kills and stats["created"] >= every * (len(SERVICE_KILLS) - len(kills) + 1):
                    name = kills.pop(0)
                    await asyncio.to_thread(platform.restart, name, graceful=False)
                    stats[f"kill -9 + restart {name}"] += 1

        async with Db(platform.database_url) as db:
            await asyncio.gather(chaos(db), *(worker() for _ in range(WORKERS)))
            # Anything still running (a client's end raced a crash) is ended now.
            for customer in customers:
                for session_id in await _running(db, customer.tenant_id):
                    assert (await customer.end(session_id)).status_code == 200
        assert stats["created"] == SESSIONS

        await no_leaks(platform, timeout=90)
        lost, doubled = await audit(platform, timeout=90)
        async with Db(platform.database_url) as db:
            for customer in customers:
                await eventually(customer.reconciled, timeout=60, what="billing balance == sessions remaining")
                completed = await db.count("SELECT count(*) FROM sessions.sessions WHERE tenant_id = $1::text::uuid"
                                           " AND status = 'completed'", customer.tenant_id)
                billed = await db.count("SELECT count(*) FROM billing.usage WHERE tenant_id = $1::text::uuid",
                                        customer.tenant_id)
                usage = await customer.usage()
                assert billed == completed == usage["credits_used"], (billed, completed, usage)
        total_used = sum([(await c.usage())["credits_used"] for c in customers])
        assert total_used == SESSIONS
        live_dirs = len(profile_dirs(platform))
    print("\nmany-sessions run:", dict(stats))
    crashed = stats["ended: browser_crashed"]
    killed = stats["leased browsers SIGKILLed"] + stats["idle browsers SIGKILLed"]
    row.done(f"{SESSIONS} sessions created and billed exactly once ({killed} browsers killed, {crashed} sessions "
             f"ended as browser_crashed); ledger reconciles for all {TENANTS} tenants; "
             f"0 zombies, 0 stray profile dirs ({live_dirs} pooled), 0 after shutdown", lost, doubled)


async def _running(db: Db, tenant_id: str) -> list[str]:
    rows = await db.conn.fetch("SELECT id FROM sessions.sessions WHERE tenant_id = $1::text::uuid"
                               " AND status = 'running'", tenant_id)
    return [str(r["id"]) for r in rows]
