"""payment.verified → tenant.provisioned latency of the provisioner as a process with the kubernetes
backend against the fake Kubernetes API (real Postgres and RabbitMQ): 50 payments one by one, then
a burst of 50.

`python -m bench.provisioner_latency [N]` — prints the summary as JSON."""
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from uuid import uuid4

from tests import infra
from tests.fakes.kube_api import FakeKubeAPI
from tests.integration.provisioner_support import Bus, payment, start_service


async def measure(mq: str, n: int) -> dict[str, list[float]]:
    async with Bus(mq) as bus:
        one_by_one = []
        for _ in range(n):
            tid = uuid4()
            sent = await bus.publish(payment(tid))
            one_by_one.append(await bus.wait_for("provisioner.tenant_provisioned", tid) - sent)
        tenants = [uuid4() for _ in range(n)]
        sent = {tid: await bus.publish(payment(tid)) for tid in tenants}
        burst = [await bus.wait_for("provisioner.tenant_provisioned", tid) - sent[tid] for tid in tenants]
    return {"sequential": one_by_one, f"burst_of_{n}": burst}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    logs = Path(tempfile.mkdtemp(prefix="bf-provisioner-latency-"))
    fake = FakeKubeAPI(terminating_seconds=0.1)
    fake.start()
    try:
        with infra.postgres_server() as pg, infra.rabbitmq_server() as mq_server, \
                infra.fresh_database(pg) as db, infra.fresh_vhost(mq_server) as mq:
            service = start_service(fake, db, mq, logs)
            try:
                samples = asyncio.run(measure(mq, n))
            finally:
                service.stop()
    finally:
        fake.stop()
    results = {}
    for name, taken in samples.items():
        q = statistics.quantiles(taken, n=100, method="inclusive")
        results[name] = {"n": len(taken), "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
                         "max_ms": round(max(taken) * 1000, 1)}
    results["kube_api_requests"] = len(fake.requests)
    print("payment.verified -> tenant.provisioned (kubernetes backend, fake API):", json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
