"""Where a context session's start goes, one phase at a time, spaced so that each starts on a
settled platform (the background work of the one before has finished):
`python -m bench.connect_phases [--env CONTEXT_RESERVE=0] [--n 40] [--pause 0.3]`.

Per round: `POST /v1/sessions` (context) and its `POST …/end`; a bare websocket handshake on
`/v1/connect` and its first round trip (`Browser.getVersion`); Playwright's `connect_over_cdp` on
`/v1/connect` and its `close()`. Run it with and without CONTEXT_RESERVE to see what the
reservations take off each phase (BENCHMARKS.md, "Context sessions").
"""
import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import websockets
from playwright.async_api import async_playwright

from bench import scenarios
from bench.contexts import PLANS, connect_url, wait_pool
from bench.stats import pct
from tests import infra
from tests.e2e.platform import WEBHOOK_SECRET, Platform

PHASES = ("create", "end", "handshake", "first_round_trip", "playwright_connect", "playwright_close")


async def measure(platform, n: int, pause: float) -> dict[str, list[float]]:
    async with httpx.AsyncClient(timeout=60) as http, async_playwright() as pw:
        db = await asyncpg.connect(platform.database_url)
        try:
            ctx = await scenarios.new_tenant(http, platform, "bench_ctx", WEBHOOK_SECRET, idle=0)
            url = connect_url(ctx)
            for _ in range(4):  # the tenant uses contexts: its host is kept warm
                await (await pw.chromium.connect_over_cdp(url)).close()
            await wait_pool(db, ctx, hosts=1)
        finally:
            await db.close()
        ms: dict[str, list[float]] = {p: [] for p in PHASES}

        def lap(phase: str, since: float) -> float:
            now = time.perf_counter()
            ms[phase].append((now - since) * 1000)
            return now

        for _ in range(n):
            t = time.perf_counter()
            r = await http.post(f"{ctx.sessions}/v1/sessions", json={"isolation": "context"}, headers=ctx.auth)
            r.raise_for_status()
            t = lap("create", t)
            await scenarios.end(http, ctx, r.json()["id"])
            lap("end", t)
            await asyncio.sleep(pause)
            t = time.perf_counter()
            async with websockets.connect(url, max_size=None) as ws:
                t = lap("handshake", t)
                await ws.send(json.dumps({"id": 1, "method": "Browser.getVersion"}))
                await ws.recv()
                lap("first_round_trip", t)
            await asyncio.sleep(pause)
            t = time.perf_counter()
            browser = await pw.chromium.connect_over_cdp(url)
            t = lap("playwright_connect", t)
            await browser.close()
            lap("playwright_close", t)
            await asyncio.sleep(pause)
        return ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between phases")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bf-bench-phases-"))
    plans = workdir / "plans.json"
    plans.write_text(json.dumps(PLANS))
    env = dict(item.split("=", 1) for item in args.env)
    with infra.postgres_server() as pg, infra.rabbitmq_server() as mq, \
            infra.fresh_database(pg) as db, infra.fresh_vhost(mq) as vhost:
        platform = Platform(db, vhost, workdir, PLANS_FILE=str(plans), LOG_LEVEL="WARNING", **env).start()
        try:
            ms = asyncio.run(measure(platform, args.n, args.pause))
        finally:
            platform.stop()
    print(f"{' '.join(args.env) or 'defaults'}, n={args.n}:")
    print("| phase | p50 ms | p90 ms |\n|---|---|---|")
    for phase in PHASES:
        print(f"| {phase} | {pct(ms[phase], 50):.1f} | {pct(ms[phase], 90):.1f} |")


if __name__ == "__main__":
    main()
