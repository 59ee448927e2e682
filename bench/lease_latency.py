"""Lease latency with 50 concurrent requests through shared.rpc.RpcClient to a real warm_pool
process (sandboxed Chromium, Postgres, RabbitMQ): requests for an unknown tenant (the RPC alone),
then a tenant with 20 warm browsers leased 50 at once (warm, cold and refused).

`python -m bench.lease_latency` — prints the summary as JSON."""
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from shared.rpc import RpcClient
from tests import infra
from tests.integration.warm_pool_process import WarmPool, lease, provision


def summary(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(pick(0.99) * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


async def timed(coro):
    started = time.perf_counter()
    reply = await coro
    return reply, time.perf_counter() - started


async def measure(mq: str, wp: WarmPool) -> dict:
    rpc = RpcClient(mq)
    await rpc.connect()
    try:
        await asyncio.gather(*(lease(rpc, uuid.uuid4()) for _ in range(50)))  # warm up connections
        unknown = await asyncio.gather(*(timed(lease(rpc, uuid.uuid4())) for _ in range(50)))
        tenant = await provision(mq, prewarm=20)
        await wp.wait_pool(tenant, idle=20, launching=0, timeout=90)
        results = await asyncio.gather(*(timed(lease(rpc, tenant)) for _ in range(50)))
    finally:
        await rpc.close()
    return {"rpc_only_unknown_tenant": summary([t for _, t in unknown]),
            "warm": summary([t for r, t in results if r.ok and r.warm]),
            "cold": summary([t for r, t in results if r.ok and not r.warm]),
            "no_capacity": summary([t for r, t in results if not r.ok]),
            "all": summary([t for _, t in results])}


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bf-lease-latency-"))
    with infra.postgres_server() as pg, infra.rabbitmq_server() as mq_server, \
            infra.fresh_database(pg) as db, infra.fresh_vhost(mq_server) as mq:
        wp = WarmPool(db=db, mq=mq, root=workdir, logs=workdir, max_browsers=25, lease_wait_s=0).start()
        try:
            report = asyncio.run(measure(mq, wp))
        finally:
            wp.service.stop()
            wp.kill_leftovers()
    print("lease latency, 50 concurrent:", json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
