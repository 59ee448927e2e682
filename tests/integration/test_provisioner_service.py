"""The provisioner as its own process with the kubernetes backend: RabbitMQ in, fake Kubernetes API
server, tenant events out. Also measures payment.verified → tenant.provisioned latency."""
import asyncio
import json
import statistics
import time
from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid4

import aio_pika
import httpx
import pytest

from shared.messages import PaymentVerified, SubscriptionChanged
from shared.plans import load_plans
from shared.settings import DEFAULT_PLANS_FILE
from tests import infra
from tests.fakes.kube_api import FakeKubeAPI

PLANS = load_plans(DEFAULT_PLANS_FILE)
EXCHANGE = "browserfleet.events"


@pytest.fixture
def fake():
    api = FakeKubeAPI(terminating_seconds=0.1)
    api.start()
    yield api
    api.stop()


def start_service(fake, fresh_db, fresh_mq, artifacts_dir) -> infra.ServiceProcess:
    env = {"HTTP_PORT": str(infra.free_port()), "DATABASE_URL": fresh_db, "RABBITMQ_URL": fresh_mq,
           "PROVISIONER_BACKEND": "kubernetes", "KUBE_API_URL": fake.url, "RECONCILE_INTERVAL_S": "0.5",
           "LOG_LEVEL": "INFO"}
    service = infra.ServiceProcess("provisioner", env, artifacts_dir).start()
    service.wait_ready()
    return service


@pytest.fixture
def service(fake, fresh_db, fresh_mq, artifacts_dir):
    orphan = {"app.kubernetes.io/managed-by": "browserfleet-provisioner", "browserfleet.io/tenant": str(uuid4())}
    fake.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant-leftover", "labels": orphan}})
    proc = start_service(fake, fresh_db, fresh_mq, artifacts_dir)
    yield proc
    proc.stop()


class Bus:
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


def payment(tenant_id: UUID, plan: str = "professional") -> PaymentVerified:
    now = datetime.now(timezone.utc)
    return PaymentVerified(tenant_id=tenant_id, subscription_id="sub_x", plan=plan, period_start=now,
                           period_end=now + timedelta(days=30), credits=PLANS[plan].credits, limits=PLANS[plan].limits)


async def test_payment_to_tenant_and_cancel_to_nothing_with_the_reconciler_on_start(service, fake, fresh_mq):
    async with Bus(fresh_mq) as bus:
        tid = uuid4()
        ns = f"tenant-{tid.hex[:12]}"
        await bus.publish(payment(tid))
        await bus.wait_for("provisioner.tenant_provisioned", tid)
        assert fake.get("horizontalpodautoscalers", "browsers", ns)["spec"]["maxReplicas"] == 50
        await bus.publish(SubscriptionChanged(tenant_id=tid, plan="professional", status="canceled"))
        await bus.wait_for("provisioner.tenant_deprovisioned", tid)
        assert fake.get("namespaces", ns) is None
    assert fake.get("namespaces", "tenant-leftover") is None  # removed by the reconciler on start
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'provisioner_tenants{status="deprovisioned"}' in metrics


async def test_measure_payment_verified_to_tenant_provisioned_latency(service, fake, fresh_mq, artifacts_dir):
    results = {}
    async with Bus(fresh_mq) as bus:
        one_by_one = []
        for _ in range(50):
            tid = uuid4()
            sent = await bus.publish(payment(tid))
            one_by_one.append(await bus.wait_for("provisioner.tenant_provisioned", tid) - sent)
        tenants = [uuid4() for _ in range(50)]
        sent = {tid: await bus.publish(payment(tid)) for tid in tenants}
        burst = [await bus.wait_for("provisioner.tenant_provisioned", tid) - sent[tid] for tid in tenants]
    for name, samples in (("sequential", one_by_one), ("burst_of_50", burst)):
        q = statistics.quantiles(samples, n=100, method="inclusive")
        results[name] = {"n": len(samples), "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
                         "max_ms": round(max(samples) * 1000, 1)}
    results["kube_api_requests"] = len(fake.requests)
    (artifacts_dir / "provisioner_latency.json").write_text(json.dumps(results, indent=2))
    print("payment.verified -> tenant.provisioned (kubernetes backend, fake API):", json.dumps(results))
    assert len(fake.list("namespaces", selector="app.kubernetes.io/managed-by=browserfleet-provisioner")) == 100
