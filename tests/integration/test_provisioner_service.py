"""The provisioner as its own process with the kubernetes backend: RabbitMQ in, fake Kubernetes API
server, tenant events out (the latency of that is measured by `python -m bench.provisioner_latency`)."""
from uuid import uuid4

import httpx
import pytest

from shared.messages import SubscriptionChanged
from tests.fakes.kube_api import FakeKubeAPI
from tests.integration.provisioner_support import Bus, payment, start_service


@pytest.fixture
def fake():
    api = FakeKubeAPI(terminating_seconds=0.1)
    api.start()
    yield api
    api.stop()


@pytest.fixture
def service(fake, fresh_db, fresh_mq, artifacts_dir):
    orphan = {"app.kubernetes.io/managed-by": "browserfleet-provisioner", "browserfleet.io/tenant": str(uuid4())}
    fake.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant-leftover", "labels": orphan}})
    proc = start_service(fake, fresh_db, fresh_mq, artifacts_dir)
    yield proc
    proc.stop()


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
