"""The sessions service as a process on its own database and vhost, a stand-in for warm_pool's
lease RPC that launches real Chromium, and tenants fed in through the events exchange (the
fixtures on top are in tests/integration/conftest.py)."""
import asyncio
import contextlib
import json
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID, uuid4

import aio_pika
import httpx
import websockets

from shared.cdp import CdpCommands
from shared.messages import (LEASE_QUEUE, Event, LeaseReply, LeaseRequest, PaymentVerified, SubscriptionChanged,
                             TenantProvisioned)
from shared.plans import Limits
from tests import infra
from tests.chromium import Chromium

ADMIN = {"Authorization": "Bearer test-admin-token"}


class LeaseResponder:
    """Answers LeaseRequests like warm_pool: `mode` is chromium (launch one), fake (a browser
    URL nobody listens on, for tests that never connect), no_capacity, silent (no answer), or
    no_context (as chromium, but a context lease is answered as a warm_pool that ignores the
    isolation would: a browser, no context_id).
    A context lease (request.isolation "context") in chromium mode gets a BrowserContext this
    stand-in creates in one shared Chromium (with a first page unless `first_page` is off)."""

    def __init__(self, url: str):
        self.url, self.mode = url, "chromium"
        self.browsers: dict[UUID, Chromium] = {}
        self.requests: list[LeaseRequest] = []
        self.contexts: dict[UUID, str] = {}  # session id -> its BrowserContext
        self.first_page = True
        self.shared: Chromium | None = None
        self._cdp = None
        self._cdp_lock = asyncio.Lock()

    async def context_browser(self) -> tuple[Chromium, CdpCommands]:
        """The shared browser of context leases, and warm_pool's own CDP connection to it."""
        async with self._cdp_lock:
            if self.shared is None:
                self.shared = await Chromium.launch()
                self._ws = await websockets.connect(self.shared.ws_url, max_size=None)
                self._cdp = CdpCommands(self._ws, timeout_s=15)
        return self.shared, self._cdp

    async def _context_lease(self, request: LeaseRequest) -> LeaseReply:
        browser, cdp = await self.context_browser()
        async with self._cdp_lock:
            context_id = (await cdp.call("Target.createBrowserContext"))["browserContextId"]
            if self.first_page:
                await cdp.call("Target.createTarget", {"url": "about:blank", "browserContextId": context_id})
        self.contexts[request.session_id] = context_id
        return LeaseReply(ok=True, browser_id=browser.id, cdp_ws_url=browser.ws_url, warm=True,
                          context_id=context_id, downloads_path=f"{browser.profile}/downloads/{request.session_id}")

    async def start(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=200)
        queue = await self.channel.declare_queue(LEASE_QUEUE, durable=True)
        await queue.consume(self._on_request)

    async def _on_request(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            request = LeaseRequest.model_validate_json(message.body)
            self.requests.append(request)
            if self.mode == "silent":  # a warm_pool that took the request and died
                return
            if self.mode == "no_capacity":
                reply = LeaseReply(ok=False, error="no_capacity")
            elif self.mode == "fake" or (self.mode == "no_context" and request.isolation == "context"):
                context = request.isolation == "context" and self.mode == "fake"
                reply = LeaseReply(ok=True, browser_id=uuid4(), cdp_ws_url="ws://127.0.0.1:9/devtools/none",
                                   warm=True, context_id="FAKE" if context else None)
            elif request.isolation == "context":
                reply = await self._context_lease(request)
            else:
                browser = await Chromium.launch()
                self.browsers[request.session_id] = browser
                reply = LeaseReply(ok=True, browser_id=browser.id, cdp_ws_url=browser.ws_url, warm=False)
            await self.channel.default_exchange.publish(
                aio_pika.Message(reply.model_dump_json().encode(), correlation_id=message.correlation_id),
                routing_key=message.reply_to)

    async def stop(self) -> None:
        for browser in [*self.browsers.values(), *([self.shared] if self.shared else [])]:
            await browser.kill()
        await self.connection.close()


async def publish(url: str, event: Event) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("browserfleet.events", aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.publish(aio_pika.Message(event.model_dump_json().encode(), content_type="application/json"),
                               routing_key=event.type)


async def bind_event_sink(url: str) -> None:
    """Stands in for billing's and warm_pool's queues, so session events are routable."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("browserfleet.events", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("test.session-events", durable=True)
        await queue.bind(exchange, routing_key="sessions.#")


async def session_events(url: str) -> list[dict]:
    """Drain the session events published so far."""
    events = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("test.session-events", durable=True)
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            events.append(json.loads(message.body))
    return events


class Platform:
    def __init__(self, mq_url: str, services: list[infra.ServiceProcess], lease: LeaseResponder):
        self.mq_url, self.services, self.lease = mq_url, services, lease
        self.url = services[0].url
        self.http = httpx.AsyncClient(base_url=self.url, timeout=30)

    async def tenant(self, *, credits: int = 100, max_concurrent: int = 50, max_session_seconds: int = 3600,
                     plan: str = "professional", provisioned: bool = True) -> tuple[UUID, dict]:
        """A paying tenant with one API key; returns (tenant id, auth headers)."""
        tenant_id = uuid4()
        limits = Limits(max_concurrent_sessions=max_concurrent, max_session_seconds=max_session_seconds,
                        prewarm_browsers=0)
        now = datetime.now(timezone.utc)
        await publish(self.mq_url, PaymentVerified(
            tenant_id=tenant_id, subscription_id="sub_test", plan=plan, period_start=now - timedelta(days=1),
            period_end=now + timedelta(days=29), credits=credits, limits=limits))
        if provisioned:
            await publish(self.mq_url, TenantProvisioned(tenant_id=tenant_id, namespace="ns", plan=plan,
                                                         limits=limits))
        key = await self.api_key(tenant_id)
        # The two events travel on separate queues: wait for both, or a create can still meet
        # an unprovisioned tenant (403).
        await self.wait_for(lambda: self.tenant_ready(tenant_id, provisioned=provisioned))
        return tenant_id, {"Authorization": f"Bearer {key}"}

    async def api_key(self, tenant_id: UUID) -> str:
        async def created():
            r = await self.http.post(f"/v1/admin/tenants/{tenant_id}/api-keys", headers=ADMIN)
            return r.json()["api_key"] if r.status_code == 201 else None
        return await self.wait_for(created)

    async def tenant_ready(self, tenant_id: UUID, *, provisioned: bool) -> bool:
        r = await self.http.get(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN)
        return (r.status_code == 200 and r.json()["credits_granted"] > 0
                and r.json()["provisioned"] == provisioned)

    async def change_subscription(self, tenant_id: UUID, status: str) -> None:
        await publish(self.mq_url, SubscriptionChanged(tenant_id=tenant_id, plan="professional", status=status))

    @staticmethod
    async def wait_for(check, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.1)
        raise AssertionError("condition not met in time")


def start_sessions(database_url: str, mq_url: str, log_dir: Path, *, name: str = "sessions", **extra) -> infra.ServiceProcess:
    port = infra.free_port()
    env = {"DATABASE_URL": database_url, "RABBITMQ_URL": mq_url, "HTTP_PORT": str(port),
           "PUBLIC_URL": f"http://127.0.0.1:{port}", "ADMIN_TOKEN": "test-admin-token", "LOG_FORMAT": "text",
           "LEASE_TIMEOUT_S": "5", "DISCONNECT_GRACE_S": "1", "REAPER_INTERVAL_S": "0.3",
           **{k.upper(): str(v) for k, v in extra.items()}}
    service = infra.ServiceProcess("sessions", env, log_dir)
    service.log_path = log_dir / f"{name}.log"
    service.start()
    service.wait_ready()
    return service


@contextlib.asynccontextmanager
async def sessions_platform(database_url: str, mq_url: str, log_dir: Path, *, name: str = "sessions"):
    """The sessions service alone as a process, with the lease stand-in and an event sink bound."""
    lease = LeaseResponder(mq_url)
    await lease.start()
    await bind_event_sink(mq_url)
    service = start_sessions(database_url, mq_url, log_dir, name=name)
    platform = Platform(mq_url, [service], lease)
    try:
        yield platform
    finally:
        await platform.http.aclose()
        service.stop(signal.SIGTERM)
        await lease.stop()
