"""What the local sandbox costs, side by side in one run: `python -m bench.sandbox [--quick]`.

1. Launch: warm_pool's own launch (LocalChromium.launch, as for a waiting session) until DevTools
   answers, plain (root, --no-sandbox, the host's namespaces) and sandboxed, alternating one by one.
2. Lifecycle (create → connect_over_cdp → new page → goto → title → end), 1 and 10 clients, on a
   platform with the sandbox on and one with it off, in alternating blocks.
Writes bench/sandbox_results.json and prints a table.
"""
import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

from bench import scenarios
from bench.__main__ import BENCH_PLANS
from services.warm_pool.adapters.local import LocalChromium
from services.warm_pool.adapters.sandbox import Sandbox, SandboxConfig
from services.warm_pool.settings import default_chromium
from tests import infra
from tests.e2e.platform import WEBHOOK_SECRET, Platform
from tests.helpers import local_page_server, page_port

ROOT = Path(__file__).resolve().parent.parent


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def launches(samples: int) -> dict:
    root = infra.browser_root(Path(tempfile.mkdtemp(prefix="bf-bench-sandbox-")))
    sandbox = Sandbox(SandboxConfig(host_ports=[page_port()]), chromium_path=default_chromium(), profile_root=root)
    sandbox.start(alive=LocalChromium.live_warm_pool)
    backends = {"plain": LocalChromium(chromium_path=default_chromium(), profile_root=root / "plain"),
                "sandboxed": LocalChromium(chromium_path=default_chromium(), profile_root=root / "sandboxed",
                                           sandbox=sandbox)}
    tenant = uuid.uuid4()  # one tenant: the plain backend serves only one
    times: dict[str, list[float]] = {name: [] for name in backends}
    kills: dict[str, list[float]] = {name: [] for name in backends}
    try:
        for i in range(samples):
            for name, backend in (backends.items() if i % 2 == 0 else reversed(backends.items())):
                browser_id = uuid.uuid4()
                t = time.perf_counter()
                await backend.launch(browser_id, tenant_id=tenant, urgent=True)
                times[name].append(time.perf_counter() - t)
                t = time.perf_counter()
                await backend.kill(browser_id)
                kills[name].append(time.perf_counter() - t)
                await asyncio.sleep(0.3)
            print(f"  launch {i + 1}/{samples}", flush=True)
    finally:
        for backend in backends.values():
            await backend.close()
    return {name: {"ready_p50_ms": statistics.median(v) * 1000, "ready_p90_ms": p(v, 0.9) * 1000,
                   "kill_p50_ms": statistics.median(kills[name]) * 1000, "n": len(v)}
            for name, v in times.items()}


async def _block(platform, page_url: str, quick: bool) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=60) as http, async_playwright() as pw:
        tenant = await scenarios.new_tenant(http, platform, "bench", WEBHOOK_SECRET, idle=10)
        out = {}
        for c, iters in ((1, 10 if quick else 40), (10, 20 if quick else 80)):
            out[f"c{c}"] = (await scenarios.lifecycle(http, pw, tenant, page_url, c, iters))["p50"]
            await scenarios.wait_idle(platform, 10)
        return out


def lifecycles(quick: bool, blocks: int = 2) -> dict:
    """Platforms with the sandbox on and off, in alternating blocks (the infra helpers are sync)."""
    out: dict[str, dict[str, list[float]]] = {"on": {"c1": [], "c10": []}, "off": {"c1": [], "c10": []}}
    with infra.postgres_server() as pg, infra.rabbitmq_server() as mq, local_page_server() as page_url:
        for block in range(blocks):
            for mode in ("on", "off") if block % 2 == 0 else ("off", "on"):
                workdir = Path(tempfile.mkdtemp(prefix=f"bf-bench-{mode}-"))
                plans = workdir / "plans.json"
                plans.write_text(json.dumps(BENCH_PLANS))
                with infra.fresh_database(pg) as db, infra.fresh_vhost(mq) as vhost:
                    platform = Platform(db, vhost, workdir, PLANS_FILE=str(plans), LOG_LEVEL="WARNING",
                                        BROWSER_SANDBOX=mode).start()
                    try:
                        result = asyncio.run(_block(platform, page_url, quick))
                    finally:
                        platform.stop()
                for c, p50 in result.items():
                    out[mode][c].append(p50)
                print(f"  lifecycle block {block + 1}/{blocks}, sandbox {mode}: "
                      f"{result['c1']:.0f} / {result['c10']:.0f} ms", flush=True)
    return {mode: {c: statistics.median(v) for c, v in per.items()} for mode, per in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-lifecycle", action="store_true")
    args = parser.parse_args()
    results = {"launch": asyncio.run(launches(6 if args.quick else 12))}
    if not args.no_lifecycle:
        results["lifecycle_p50_ms"] = lifecycles(args.quick)
    (ROOT / "bench" / "sandbox_results.json").write_text(json.dumps(results, indent=2))
    launch = results["launch"]
    print(f"launch to DevTools ready, p50: plain {launch['plain']['ready_p50_ms']:.0f} ms, sandboxed "
          f"{launch['sandboxed']['ready_p50_ms']:.0f} ms (+{launch['sandboxed']['ready_p50_ms'] - launch['plain']['ready_p50_ms']:.0f} ms); "
          f"p90 {launch['plain']['ready_p90_ms']:.0f} / {launch['sandboxed']['ready_p90_ms']:.0f} ms; "
          f"kill p50 {launch['plain']['kill_p50_ms']:.0f} / {launch['sandboxed']['kill_p50_ms']:.0f} ms")
    if "lifecycle_p50_ms" in results:
        life = results["lifecycle_p50_ms"]
        for c in ("c1", "c10"):
            print(f"lifecycle {c}: sandbox off {life['off'][c]:.0f} ms, on {life['on'][c]:.0f} ms "
                  f"({life['on'][c] / life['off'][c]:.3f}x)")


if __name__ == "__main__":
    main()
