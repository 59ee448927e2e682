"""Lease latency with 50 concurrent requests through shared.rpc.RpcClient (a measurement: the
numbers are written to the test artifacts, not asserted)."""
import asyncio
import json
import statistics
import time
import uuid

from tests.integration.test_warm_pool_service import lease, provision, start_pool, rpc  # noqa: F401


def _summary(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(pick(0.99) * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


async def _timed(coro):
    started = time.perf_counter()
    reply = await coro
    return reply, time.perf_counter() - started


async def test_lease_latency_with_50_concurrent_requests(start_pool, fresh_mq, rpc, artifacts_dir):
    wp = start_pool(max_browsers=25, lease_wait_s=0)
    await asyncio.gather(*(lease(rpc, uuid.uuid4()) for _ in range(50)))  # warm up connections
    unknown = await asyncio.gather(*(_timed(lease(rpc, uuid.uuid4())) for _ in range(50)))
    assert {r.error for r, _ in unknown} == {"unknown_tenant"}

    tenant = await provision(fresh_mq, prewarm=20)
    await wp.wait_pool(tenant, idle=20, launching=0, timeout=90)
    results = await asyncio.gather(*(_timed(lease(rpc, tenant)) for _ in range(50)))
    warm = [t for r, t in results if r.ok and r.warm]
    cold = [t for r, t in results if r.ok and not r.warm]
    refused = [t for r, t in results if not r.ok]
    assert len(warm) == 20 and {r.error for r, _ in results if not r.ok} <= {"no_capacity"}
    assert len({r.browser_id for r, _ in results if r.ok}) == len(warm) + len(cold)

    report = {"rpc_only_unknown_tenant": _summary([t for _, t in unknown]), "warm": _summary(warm),
              "cold": _summary(cold), "no_capacity": _summary(refused),
              "all": _summary([t for _, t in results])}
    (artifacts_dir / "warm_pool_lease_latency.json").write_text(json.dumps(report, indent=2))
    print("lease latency, 50 concurrent:", json.dumps(report))
