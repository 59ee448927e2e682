"""make bench → BENCHMARKS.md and bench/latency.png. `python -m bench --quick` for a short run."""
import argparse
import asyncio
import json
import os
import platform as host
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

from bench import report, scenarios
from tests import infra
from tests.e2e.platform import WEBHOOK_SECRET, Platform
from tests.helpers import local_page_server

ROOT = Path(__file__).resolve().parent.parent
BENCH_PLANS = {
    "bench": {"credits": 1000000, "max_concurrent_sessions": 100, "max_session_seconds": 3600,
              "prewarm_browsers": 10, "session_price": "0.01", "minute_price": "0.002",
              "included_minutes": 5, "stripe_price_id": "price_bench"},
    "bench_cold": {"credits": 1000000, "max_concurrent_sessions": 100, "max_session_seconds": 3600,
                   "prewarm_browsers": 0, "session_price": "0.01", "minute_price": "0.002",
                   "included_minutes": 5, "stripe_price_id": "price_bench_cold"},
}


def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bf-bench-"))
    plans = workdir / "plans.json"
    plans.write_text(json.dumps(BENCH_PLANS))
    with infra.postgres_server() as pg, infra.rabbitmq_server() as mq, \
            infra.fresh_database(pg) as db, infra.fresh_vhost(mq) as vhost, local_page_server() as page_url:
        platform = Platform(db, vhost, workdir, PLANS_FILE=str(plans), LOG_LEVEL="WARNING").start()
        try:
            return asyncio.run(measure(args, platform, vhost, page_url))
        finally:
            platform.stop()


async def measure(args, platform, vhost: str, page_url: str) -> dict:
    n = 10 if args.quick else 1
    results: dict = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    async with httpx.AsyncClient(timeout=60) as http, async_playwright() as pw:
        tenant = await scenarios.new_tenant(http, platform, "bench", WEBHOOK_SECRET, idle=10)
        for c, iters in ((1, 100 // n), (10, 200 // n)):
            results[f"lifecycle_c{c}"] = await scenarios.lifecycle(http, pw, tenant, page_url, c, iters)
            results[f"floor_c{c}"] = await scenarios.floor(pw, page_url, c, iters)
            results[f"cold_c{c}"] = await scenarios.cold(pw, page_url, c, max(iters // 4, 10))
            await scenarios.wait_idle(platform, 10)
        results["create_warm"] = await scenarios.create_latency(http, tenant, 150 // n, settle=0.3)
        results["create_on_demand"] = await scenarios.on_demand_latency(http, platform, "bench_cold", WEBHOOK_SECRET,
                                                                         20 // n)
        results["relay"] = await scenarios.relay_overhead(http, tenant, 1000 // n)
        await scenarios.wait_idle(platform, 10)
        results["relay_share"] = await scenarios.relay_share(http, pw, tenant, page_url, platform.database_url,
                                                             60 // n * 2)
        capacity = await scenarios.launch_capacity()
        results["launch_capacity_per_s"] = capacity
        for load in (0.5, 0.8, 1.0):
            await scenarios.wait_idle(platform, 10)
            results[f"warm_hits_{int(load * 100)}"] = await scenarios.warm_hits(
                http, tenant, capacity * load, 80 // n, hold_s=1.0)
        await scenarios.wait_idle(platform, 10)  # the 100 % load run has settled
        results["provisioning"] = await scenarios.provisioning_latency(
            http, platform, "bench_cold", WEBHOOK_SECRET, vhost, 50 // n)
        results["memory"] = await scenarios.memory_and_cost(http, pw, tenant, page_url, 60 / n)
        results["creates_retried_after_503"] = scenarios.RETRIED_503[0]
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a tenth of the iterations")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    command = "make bench" if not args.quick else "python -m bench --quick"
    started = time.monotonic()
    results = run(args)
    results["duration_s"] = time.monotonic() - started
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2, default=str))
    machine = f"{host.node()} — {os.cpu_count()} cores, {host.machine()}, Python {sys.version.split()[0]}"
    report.write(results, Path(args.out), ROOT / "bench" / "latency.png", command=command, machine=machine)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
