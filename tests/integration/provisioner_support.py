"""What the provisioner's tests send it and read back: its events, its rows, the provisioner as a
process against the fake Kubernetes API, and a bus that watches what it announces."""
import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import aio_pika

from services.provisioner import handlers
from services.provisioner.settings import ProvisionerSettings
from shared.messages import PaymentVerified, SubscriptionChanged
from shared.plans import load_plans
from tests import infra
from tests.fakes.kube_api import FakeKubeAPI

MIGRATIONS = Path(handlers.__file__).with_name("migrations")
PLANS = load_plans(ProvisionerSettings().plans_file)
EXCHANGE = "browserfleet.events"


def payment(tenant_id: UUID, plan: str = "professional") -> PaymentVerified:
    now = datetime.now(timezone.utc)
    return PaymentVerified(tenant_id=tenant_id, subscription_id=f"sub_{tenant_id.hex[:8]}", plan=plan,
                           period_start=now, period_end=now + timedelta(days=30), credits=PLANS[plan].credits,
                           limits=PLANS[plan].limits)


def changed(tenant_id: UUID, status: str, plan: str = "professional") -> SubscriptionChanged:
    return SubscriptionChanged(tenant_id=tenant_id, plan=plan, status=status, limits=PLANS[plan].limits)


async def tenant(pool, tenant_id):
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM tenants WHERE tenant_id = $1", tenant_id)


async def events(pool, routing_key: str, tenant_id: UUID) -> list[dict]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT body FROM outbox WHERE routing_key = $1 AND body->>'tenant_id' = $2 "
                                "ORDER BY created_at", routing_key, str(tenant_id))
    return [r["body"] for r in rows]


def start_service(fake: FakeKubeAPI, db_url: str, mq_url: str, log_dir: Path) -> infra.ServiceProcess:
    """The provisioner as a process with the kubernetes backend on `fake`, reconciling every 0.5 s."""
    env = {"HTTP_PORT": str(infra.free_port()), "DATABASE_URL": db_url, "RABBITMQ_URL": mq_url,
           "PROVISIONER_BACKEND": "kubernetes", "KUBE_API_URL": fake.url, "RECONCILE_INTERVAL_S": "0.5",
           "LOG_LEVEL": "INFO"}
    service = infra.ServiceProcess("provisioner", env, log_dir).start()
    service.wait_ready()
    return service


class Bus:
    """Publishes events and notes when each provisioner announcement arrives (`time.perf_counter()`)."""

    def __init__(self, url: str):
        self.url = url
        self.received: dict[tuple[str, str], float] = {}
        self.arrived = asyncio.Event()

    async def __aenter__(self):
        self.conn = await aio_pika.connect_robust(self.url)
        channel = await self.conn.channel()
        self.exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(self.exchange, routing_key="provisioner.#")
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        self.received[(body["type"], body["tenant_id"])] = time.perf_counter()
        self.arrived.set()

    async def publish(self, event) -> float:
        await self.exchange.publish(aio_pika.Message(event.model_dump_json().encode(), content_type="application/json",
                                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                    routing_key=event.type)
        return time.perf_counter()

    async def wait_for(self, kind: str, tenant_id: UUID, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while (kind, str(tenant_id)) not in self.received:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), max(deadline - time.monotonic(), 0.01))
        return self.received[(kind, str(tenant_id))]

    async def __aexit__(self, *exc):
        await self.conn.close()
