"""warm_pool as a real process with real Chromium, Postgres and RabbitMQ, and the events and lease
requests its tests send it (the `start_pool` and `rpc` fixtures are in tests/integration/conftest.py)."""
import asyncio
import os
import re
import signal
import subprocess
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import aio_pika
import asyncpg
import httpx

from shared.messages import (LEASE_QUEUE, BrowserCrashed, LeaseReply, LeaseRequest, SessionCompleted,
                             SessionStarted, TenantProvisioned)
from shared.plans import Limits
from shared.rpc import RpcClient
from tests import infra

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "warm_pool" / "migrations"
ADMIN = {"authorization": f"Bearer {infra.SECRETS['ADMIN_TOKEN']}"}
EXCHANGE = "browserfleet.events"
# A sandboxed browser's DevTools, at its own network namespace's address.
CDP_URL = re.compile(r"^ws://([\d.]+:\d+)/devtools/browser/[0-9a-f-]+$")


class WarmPool:
    def __init__(self, *, db: str, mq: str, root: Path, logs: Path, **env):
        self.db, self.mq, self.profile_root = db, mq, infra.browser_root(root)
        port = infra.free_port()
        self.service = infra.ServiceProcess("warm_pool", {
            "DATABASE_URL": db, "RABBITMQ_URL": mq, "HTTP_PORT": str(port), "PROFILE_ROOT": str(self.profile_root),
            "LOG_FORMAT": "text", "MAX_BROWSERS": "8", "LAUNCH_CONCURRENCY": "2",
            **{k.upper(): str(v) for k, v in env.items()}}, logs)
        self.url = self.service.url

    def start(self) -> "WarmPool":
        self.service.start().wait_ready()
        return self

    async def pool(self, tenant_id) -> dict:
        async with httpx.AsyncClient() as client:
            body = (await client.get(f"{self.url}/v1/pool", headers=ADMIN)).json()
        return next((t for t in body["tenants"] if t["tenant_id"] == str(tenant_id)),
                    {"idle": 0, "leased": 0, "launching": 0})

    async def wait_pool(self, tenant_id, timeout: float = 30, **want) -> dict:
        state = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = await self.pool(tenant_id)
            if all(state[k] == v for k, v in want.items()):
                return state
            await asyncio.sleep(0.2)
        raise AssertionError(f"pool never reached {want}: {state}")

    def profile_dirs(self) -> set[str]:
        return {p.name for p in self.profile_root.iterdir()} if self.profile_root.exists() else set()

    def chromium_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-f", str(self.profile_root)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    async def browsers(self, **where) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.db)
        try:
            rows = await conn.fetch("SELECT * FROM warm_pool.browsers")
        finally:
            await conn.close()
        return [r for r in rows if all(r[k] == v for k, v in where.items())]

    def kill_leftovers(self) -> None:
        for pid in self.chromium_pids():
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


async def publish(mq: str, event) -> None:
    conn = await aio_pika.connect(mq)
    async with conn:
        channel = await conn.channel()
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.publish(aio_pika.Message(event.model_dump_json().encode(), content_type="application/json",
                                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                               routing_key=event.type)


async def provision(mq: str, *, prewarm: int, max_concurrent: int = 50) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    await publish(mq, TenantProvisioned(tenant_id=tenant_id, namespace=f"tenant-{tenant_id.hex[:12]}",
                                        plan="professional",
                                        limits=Limits(max_concurrent_sessions=max_concurrent,
                                                      max_session_seconds=3600, prewarm_browsers=prewarm)))
    return tenant_id


async def lease(rpc: RpcClient, tenant_id, session_id=None) -> LeaseReply:
    req = LeaseRequest(tenant_id=tenant_id, session_id=session_id or uuid.uuid4())
    return LeaseReply.model_validate_json(await rpc.call(LEASE_QUEUE, req.model_dump_json().encode(), timeout=30))


async def start_and_end_session(mq: str, tenant_id, browser_id, session_id) -> None:
    now = datetime.now(timezone.utc)
    await publish(mq, SessionStarted(session_id=session_id, tenant_id=tenant_id, browser_id=browser_id,
                                     warm=True, started_at=now))
    await publish(mq, SessionCompleted(session_id=session_id, tenant_id=tenant_id, browser_id=browser_id,
                                       started_at=now, ended_at=now, duration_ms=1, end_reason="client",
                                       cost=Decimal("0.01")))


async def crash_events(mq: str):
    conn = await aio_pika.connect(mq)
    channel = await conn.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, routing_key=BrowserCrashed.TYPE)
    return conn, queue


async def next_crash(queue, timeout: float = 15) -> BrowserCrashed:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await queue.get(fail=False)
        if message is not None:
            await message.ack()
            return BrowserCrashed.model_validate_json(message.body)
        await asyncio.sleep(0.1)
    raise AssertionError("no browser_crashed event")


def devtools_answers(cdp_ws_url: str) -> bool:
    address = CDP_URL.match(cdp_ws_url).group(1)
    try:
        return httpx.get(f"http://{address}/json/version", timeout=2).json()["webSocketDebuggerUrl"] == cdp_ws_url
    except httpx.HTTPError:
        return False


async def wait_until(predicate, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition never became true")
