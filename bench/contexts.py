"""Context sessions against browser sessions and the baselines, side by side in one run (issue 17):
`python -m bench.contexts [--quick] [--browser-burst]`.

1. Lifecycle (get a browser → connect_over_cdp → new page → goto a local page → title → close),
   1 and 10 clients, in alternating rounds (each scenario once per round, the order reversed every
   other round): floor (a browser launched beforehand and reused, its default context), fresh
   floor (a browser launched beforehand for each lifecycle, launches untimed), context floor (a
   fresh BrowserContext per lifecycle in a warm browser, no platform), cold (launched per
   lifecycle), REST browser mode (POST /v1/sessions → … → POST …/end), REST context mode, and
   WS /v1/connect in context mode (connecting creates, closing ends).
2. The relay's added cost per `Runtime.evaluate` round trip: direct, browser mode, context mode.
3. PSS per running session (one page loaded) in each mode, and sessions per GiB.
4. A burst: 60 context sessions of one tenant at once through /v1/connect, each loading a page,
   then held with a `Runtime.evaluate` heartbeat every 2 s (optionally the same in browser mode);
   then the same burst again from a bare CDP client (bench/raw_cdp.py), with no Playwright driver.
Writes bench/contexts_results.json and prints the report's tables (BENCHMARKS.md, "Context sessions").
"""
import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from playwright.async_api import async_playwright

from bench import chromium, procs, raw_cdp, scenarios
from bench.stats import Progress, pct, summary
from services.warm_pool.settings import WarmPoolSettings
from tests import infra
from tests.e2e.platform import WEBHOOK_SECRET, Platform
from tests.helpers import local_page_server

ROOT = Path(__file__).resolve().parent.parent
PLAN = {"credits": 1000000, "max_concurrent_sessions": 100, "max_session_seconds": 3600,
        "session_price": "0.01", "minute_price": "0.002", "included_minutes": 5}
# Browser mode keeps 10 pre-warmed browsers (as `make bench`); the context tenant's plan pre-warms
# one browser only, which is what makes warm_pool keep context hosts for it once it uses them.
PLANS = {"bench": {**PLAN, "prewarm_browsers": 10, "stripe_price_id": "price_bench"},
         "bench_ctx": {**PLAN, "prewarm_browsers": 1, "stripe_price_id": "price_bench_ctx"}}
STEPS = ("get", "connect", "new_page", "goto", "title", "close", "release")
NETWORK_CHANGED = [0]
KINDS = ("floor", "fresh_floor", "context_floor", "shared_context_floor", "cold", "rest_browser", "rest_context", "connect_context")


class Timer:
    def __init__(self):
        self.steps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.steps[step] = self.steps.get(step, 0.0) + now - self._t
        self._t = now


async def drive(pw, ws_url: str, page_url: str, timer: Timer, *, fresh_context: bool = False) -> None:
    browser = await pw.chromium.connect_over_cdp(ws_url)
    timer.lap("connect")
    context = await browser.new_context() if fresh_context else browser.contexts[0]
    page = await context.new_page()
    timer.lap("new_page")
    for attempt in range(4):
        try:
            await page.goto(page_url)
            break
        except Exception as exc:
            # The baselines' browsers share the host's network: a sandbox another process sets up
            # (a veth, a route) aborts their navigation, and Chromium shows its error page or
            # reloads by itself. Counted, and loaded again once that settled.
            if attempt == 3 or not any(m in str(exc) for m in ("ERR_NETWORK_CHANGED", "interrupted by another")):
                raise
            NETWORK_CHANGED[0] += 1
            await asyncio.sleep(0.5)
            with contextlib.suppress(Exception):
                await page.wait_for_load_state()
            if page.url == page_url and await page.title() == "bench":
                break
    timer.lap("goto")
    assert await page.title() == "bench"
    timer.lap("title")
    if fresh_context:
        await context.close()
    else:
        await page.close()
    await browser.close()
    timer.lap("close")


class Runner:
    """One lifecycle of each kind; `samples[kind][clients]` collects (total, steps) per lifecycle."""

    def __init__(self, http, pw, page_url: str, rest: scenarios.Tenant, ctx: scenarios.Tenant):
        self.http, self.pw, self.page_url, self.rest, self.ctx = http, pw, page_url, rest, ctx
        self.samples: dict[str, dict[int, list[tuple[float, dict]]]] = {k: {} for k in KINDS}
        self.rounds: dict[str, dict[int, list[float]]] = {k: {} for k in KINDS}
        self.pause = 0.0

    async def _session(self, tenant, isolation: str, timer: Timer) -> None:
        for attempt in range(20):  # a 503 (no browser right now) is retried, as a client would
            r = await self.http.post(f"{tenant.sessions}/v1/sessions", json={"isolation": isolation},
                                     headers=tenant.auth)
            if r.status_code != 503:
                break
            scenarios.RETRIED_503[0] += 1
            await asyncio.sleep(0.2)
        r.raise_for_status()
        session = r.json()
        timer.lap("get")
        await drive(self.pw, session["cdp_url"], self.page_url, timer)
        await scenarios.end(self.http, tenant, session["id"])
        timer.lap("release")

    async def block(self, kind: str, clients: int, iterations: int) -> None:
        lat: list[float] = []
        progress = Progress(f"{kind} c={clients}", iterations)
        remaining = iterations
        browsers: asyncio.Queue = asyncio.Queue()
        if kind in ("floor", "context_floor"):
            for b in await asyncio.gather(*(chromium.launch_async() for _ in range(clients))):
                browsers.put_nowait(b)
        # As a platform's context host: up to CONTEXTS_PER_BROWSER clients share one browser.
        per = WarmPoolSettings.model_fields["contexts_per_browser"].default
        shared = ([await chromium.launch_async() for _ in range(-(-clients // per))]
                  if kind == "shared_context_floor" else [])
        turn = [0]
        connect = connect_url(self.ctx)

        async def one(batch: list) -> None:
            timer = Timer()
            if kind in ("floor", "context_floor"):
                b = await browsers.get()
                timer.lap("get")
                try:
                    await drive(self.pw, b.ws_url, self.page_url, timer, fresh_context=kind == "context_floor")
                finally:
                    browsers.put_nowait(b)
            elif kind == "shared_context_floor":
                b = shared[turn[0] % len(shared)]
                turn[0] += 1
                timer.lap("get")
                await drive(self.pw, b.ws_url, self.page_url, timer, fresh_context=True)
            elif kind == "fresh_floor":
                b = batch.pop()
                timer.lap("get")
                await drive(self.pw, b.ws_url, self.page_url, timer)
            elif kind == "cold":
                b = await chromium.launch_async()
                timer.lap("get")
                try:
                    await drive(self.pw, b.ws_url, self.page_url, timer)
                finally:
                    await asyncio.to_thread(b.kill)
                timer.lap("release")
            elif kind == "rest_browser":
                await self._session(self.rest, "browser", timer)
            elif kind == "rest_context":
                await self._session(self.ctx, "context", timer)
            else:
                timer.lap("get")
                await drive(self.pw, connect, self.page_url, timer)
            total = sum(timer.steps.values())
            lat.append(total)
            self.samples[kind].setdefault(clients, []).append((total, timer.steps))
            progress.step()
            await asyncio.sleep(self.pause)  # untimed: lets what the last lifecycle started finish

        while remaining > 0:
            # The fresh floor launches a batch of browsers (untimed), then uses each once.
            n = min(remaining, clients * 2 if kind == "fresh_floor" else remaining)
            batch = list(await asyncio.gather(*(chromium.launch_async() for _ in range(n)))) \
                if kind == "fresh_floor" else []
            used = list(batch)
            left = n

            async def client():
                nonlocal left
                while left > 0:
                    left -= 1
                    await one(batch)
            await asyncio.gather(*(client() for _ in range(clients)))
            remaining -= n
            for b in used:
                await asyncio.to_thread(b.kill)
        while not browsers.empty():
            await asyncio.to_thread(browsers.get_nowait().kill)
        for b in shared:
            await asyncio.to_thread(b.kill)
        self.rounds[kind].setdefault(clients, []).append(pct([v * 1000 for v in lat], 50))


async def wait_pool(db: asyncpg.Connection, tenant: scenarios.Tenant, *, idle: int = 0, hosts: int = 0,
                    timeout: float = 120) -> None:
    """The tenant's pool settled: at least `idle` idle browsers, `hosts` open context hosts, none launching."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'idle') AS idle, count(*) FILTER (WHERE state = 'hosting') AS hosts,"
            " count(*) FILTER (WHERE state = 'launching') AS launching FROM warm_pool.browsers WHERE tenant_id = $1",
            uuid.UUID(tenant.id))
        if row["idle"] >= idle and row["hosts"] >= hosts and row["launching"] == 0:
            await asyncio.sleep(1.0)
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"pool never settled: {dict(row)}")


def group_pss_mib(pid: int) -> float:
    """PSS of the process group a browser's recorded pid leads (the browser and all its children)."""
    try:
        pgid = os.getpgid(pid)
    except OSError:
        return 0.0
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]
    return procs.pss_kib(pids) / 1024


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


async def evaluate_rtt(http, tenant, isolation: str | None, n: int) -> dict:
    if isolation is None:
        b = await chromium.launch_async()
        try:
            return summary(await scenarios._evaluate_loop(b.ws_url, n))
        finally:
            b.kill()
    r = await http.post(f"{tenant.sessions}/v1/sessions", json={"isolation": isolation}, headers=tenant.auth)
    r.raise_for_status()
    try:
        return summary(await scenarios._evaluate_loop(r.json()["cdp_url"], n))
    finally:
        await scenarios.end(http, tenant, r.json()["id"])


async def memory(http, pw, db, tenant, isolation: str, page_url: str, count: int) -> dict:
    """`count` running sessions, one page loaded in each; PSS of the browsers serving them."""
    sessions, browsers = [], []
    for _ in range(count):
        r = await http.post(f"{tenant.sessions}/v1/sessions", json={"isolation": isolation}, headers=tenant.auth)
        r.raise_for_status()
        sessions.append(r.json())
        b = await pw.chromium.connect_over_cdp(sessions[-1]["cdp_url"])
        context = b.contexts[0]
        page = context.pages[0] if context.pages else await context.new_page()
        await page.goto(page_url)
        browsers.append(b)
    await asyncio.sleep(3)  # let the pages settle
    ids = [uuid.UUID(s["id"]) for s in sessions]
    rows = await db.fetch("SELECT DISTINCT b.id, b.pid FROM warm_pool.browsers b JOIN sessions.sessions s"
                          " ON s.browser_id = b.id WHERE s.id = ANY($1)", ids)
    pss = {str(r["id"]): group_pss_mib(r["pid"]) for r in rows}
    for b in browsers:
        await b.close()
    for s in sessions:
        await scenarios.end(http, tenant, s["id"])
    return {"sessions": count, "browsers": len(pss), "pss_mib": pss, "per_session_mib": sum(pss.values()) / count}


async def empty_host_pss(db, tenant) -> list[float]:
    rows = await db.fetch("SELECT pid FROM warm_pool.browsers WHERE tenant_id = $1 AND state = 'hosting'"
                          " AND active_contexts = 0", uuid.UUID(tenant.id))
    return [group_pss_mib(r["pid"]) for r in rows]


def connect_url(tenant, isolation: str = "context") -> str:
    return f"{tenant.sessions.replace('http://', 'ws://')}/v1/connect?api_key={tenant.key}&isolation={isolation}"


async def burst(http, pw, db, tenant, isolation: str, page_url: str, count: int, hold_s: float) -> dict:
    """`count` sessions at once through /v1/connect, each loading a page; then a heartbeat every 2 s."""
    url = connect_url(tenant, isolation)
    mem_before = procs.mem_available_kib()
    ready: list[float] = []
    beats: list[float] = []
    errors: list[str] = []
    live: list = []
    started = time.perf_counter()
    go = asyncio.Event()
    progress = Progress(f"burst {count} ({isolation})", count)

    async def one():
        try:
            browser = await pw.chromium.connect_over_cdp(url, timeout=120_000)
            context = browser.contexts[0]
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(page_url, timeout=120_000)
            ready.append(time.perf_counter() - started)
            live.append(browser)
        except Exception as exc:  # counted and reported
            errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            return
        finally:
            progress.step()
        await go.wait()
        until = time.perf_counter() + hold_s
        while time.perf_counter() < until:
            t = time.perf_counter()
            try:
                # Playwright's new_cdp_session needs Target.attachToBrowserTarget, which a context
                # session refuses; page.evaluate is one round trip to the page all the same.
                await page.evaluate("Date.now()")
                beats.append(time.perf_counter() - t)
            except Exception as exc:
                errors.append(f"heartbeat {type(exc).__name__}")
                return
            await asyncio.sleep(max(0.0, 2.0 - (time.perf_counter() - t)))

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    while len(ready) + len(errors) < count:
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    running = await db.fetch("SELECT browser_id FROM sessions.sessions WHERE tenant_id = $1 AND status = 'running'",
                             uuid.UUID(tenant.id))
    hosts = {r["browser_id"] for r in running}
    pids = await db.fetch("SELECT pid FROM warm_pool.browsers WHERE id = ANY($1)", list(hosts))
    pss = sum(group_pss_mib(r["pid"]) for r in pids)
    mem_after = procs.mem_available_kib()
    go.set()
    await asyncio.gather(*tasks)
    for browser in live:
        await browser.close()
    return {"isolation": isolation, "sessions": count, "live": len(live), "errors": errors,
            "ready": summary(ready), "heartbeat": summary(beats), "browsers": len(hosts),
            "pss_per_session_mib": pss / max(len(live), 1),
            "mem_available_drop_per_session_mib": (mem_before - mem_after) / 1024 / max(len(live), 1),
            "hold_s": hold_s}


async def measure(args, platform, page_url: str) -> dict:
    quick = args.quick
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": quick,
                     "env": args.env, "load_average_at_start": os.getloadavg()}
    iterations = {1: 16 if quick else 40, 10: 30 if quick else 80}
    rounds = 2
    kinds = tuple(k for k in KINDS if k in args.kinds.split(","))
    async with httpx.AsyncClient(timeout=120) as http, async_playwright() as pw:
        db = await asyncpg.connect(platform.database_url)
        try:
            rest = await scenarios.new_tenant(http, platform, "bench", WEBHOOK_SECRET, idle=0)
            ctx = await scenarios.new_tenant(http, platform, "bench_ctx", WEBHOOK_SECRET, idle=0)
            runner = Runner(http, pw, page_url, rest, ctx)
            await wait_pool(db, rest, idle=10)
            await runner.block("rest_context", 1, 4)  # the tenant uses contexts: its hosts are kept warm
            runner.samples["rest_context"].clear()
            runner.rounds["rest_context"].clear()
            await wait_pool(db, ctx, hosts=1)
            if args.burst_only:
                await wait_pool(db, ctx, hosts=args.burst_hosts, timeout=300)
                results["burst"] = {"context": await burst(http, pw, db, ctx, "context", page_url, 60,
                                                           20 if quick else 60)}
                await wait_pool(db, ctx, hosts=args.burst_hosts, timeout=300)
                results["burst"]["context_raw"] = await raw_cdp.burst(connect_url(ctx), page_url, 60,
                                                                      20 if quick else 60)
                return results
            runner.pause = args.pause
            for clients in (int(c) for c in args.clients.split(",")):
                for r in range(rounds):
                    order = kinds if r % 2 == 0 else tuple(reversed(kinds))
                    for kind in order:
                        n = iterations[clients] // rounds
                        await runner.block(kind, clients, max(n // 2, clients) if kind == "cold" else n)
                        await wait_pool(db, rest, idle=10)
                        await wait_pool(db, ctx, hosts=1)
            results["navigations_retried_network_changed"] = NETWORK_CHANGED[0]
            results["lifecycle"] = {
                kind: {str(c): {**summary([t for t, _ in s]), "per_round_p50": runner.rounds[kind][c],
                                "steps_p50": {st: pct([d.get(st, 0.0) * 1000 for _, d in s], 50) for st in STEPS}}
                       for c, s in per.items()}
                for kind, per in runner.samples.items() if per}
            if args.lifecycle_only:
                return results
            n = 200 if quick else 500
            results["relay_rtt"] = {"direct": await evaluate_rtt(http, rest, None, n),
                                    "browser": await evaluate_rtt(http, rest, "browser", n),
                                    "context": await evaluate_rtt(http, ctx, "context", n)}
            await wait_pool(db, rest, idle=10)
            await wait_pool(db, ctx, hosts=1)
            results["empty_host_pss_mib"] = await empty_host_pss(db, ctx)
            # A context host full of sessions, as a busy tenant's are.
            count = int(dict(e.split("=", 1) for e in args.env).get(
                "CONTEXTS_PER_BROWSER", WarmPoolSettings.model_fields["contexts_per_browser"].default))
            results["memory"] = {"browser": await memory(http, pw, db, rest, "browser", page_url, count),
                                 "context": await memory(http, pw, db, ctx, "context", page_url, count)}
            await wait_pool(db, rest, idle=10)
            await wait_pool(db, ctx, hosts=1)
            hold = 20 if quick else 60
            results["burst"] = {"context": await burst(http, pw, db, ctx, "context", page_url, 60, hold)}
            await wait_pool(db, ctx, hosts=1)
            results["burst"]["context_raw"] = await raw_cdp.burst(connect_url(ctx), page_url, 60, hold)
            if args.browser_burst:
                await wait_pool(db, rest, idle=10)
                results["burst"]["browser"] = await burst(http, pw, db, rest, "browser", page_url, 60, hold)
            results["creates_retried_after_503"] = scenarios.RETRIED_503[0]
        finally:
            await db.close()
    return results


def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bf-bench-ctx-"))
    plans = workdir / "plans.json"
    plans.write_text(json.dumps(PLANS))
    with infra.postgres_server() as pg, infra.rabbitmq_server() as mq, \
            infra.fresh_database(pg) as db, infra.fresh_vhost(mq) as vhost, \
            local_page_server(b"<title>bench</title><p>context sessions</p>") as page_url:
        env = dict(item.split("=", 1) for item in args.env)
        platform = Platform(db, vhost, workdir, PLANS_FILE=str(plans), LOG_LEVEL="WARNING", **env).start()
        try:
            return asyncio.run(measure(args, platform, page_url))
        finally:
            platform.stop()


def report(results: dict) -> list[str]:
    if "lifecycle" not in results:
        return [burst_line(k, b) for k, b in results["burst"].items()]
    life = results["lifecycle"]
    names = {"floor": "floor: a browser launched beforehand and reused",
             "fresh_floor": "fresh floor: a browser launched beforehand for each lifecycle",
             "context_floor": "context floor: a fresh BrowserContext per lifecycle in a warm browser (no platform)",
             "shared_context_floor": "shared context floor: the same, up to CONTEXTS_PER_BROWSER clients sharing one browser (no platform)",
             "cold": "cold: Chromium launched per lifecycle",
             "rest_browser": "REST, browser mode (create → … → end)",
             "rest_context": "REST, context mode (create → … → end)",
             "connect_context": "`/v1/connect`, context mode (connect → … → close)"}
    lines = ["| path | n (1 / 10 clients) | 1 client p50 ms | p90 | 10 clients p50 ms | p90 | "
             "× floor (1 / 10) | p50 per round, 1 client | p50 per round, 10 clients |",
             "|---|---|---|---|---|---|---|---|---|"]
    kinds = [k for k in KINDS if k in life]
    for kind in kinds:
        if "10" not in life[kind]:  # a --clients 1 run
            one = life[kind]["1"]
            lines.append(f"| {names[kind]} | {one['n']} | {one['p50']:.0f} | {one['p90']:.0f} | – | – | "
                         f"{one['p50'] / life['floor']['1']['p50']:.2f} | "
                         f"{' / '.join(f'{v:.0f}' for v in one['per_round_p50'])} | – |")
            continue
        one, ten = life[kind]["1"], life[kind]["10"]
        f1, f10 = life["floor"]["1"]["p50"], life["floor"]["10"]["p50"]
        rounds1 = " / ".join(f"{v:.0f}" for v in one["per_round_p50"])
        rounds10 = " / ".join(f"{v:.0f}" for v in ten["per_round_p50"])
        lines.append(f"| {names[kind]} | {one['n']} / {ten['n']} | {one['p50']:.0f} | {one['p90']:.0f} | "
                     f"{ten['p50']:.0f} | {ten['p90']:.0f} | {one['p50'] / f1:.2f} / {ten['p50'] / f10:.2f} | "
                     f"{rounds1} | {rounds10} |")
    lines += ["", "Steps, 1 client, p50 ms:", "", "| path | " + " | ".join(STEPS) + " |",
              "|---|" + "---|" * len(STEPS)]
    for kind in kinds:
        steps = life[kind]["1"]["steps_p50"]
        lines.append(f"| {kind} | " + " | ".join(f"{steps[s]:.0f}" for s in STEPS) + " |")
    if "relay_rtt" not in results:
        return lines + ["", *targets(results)]
    rtt = results["relay_rtt"]
    lines += ["", "| `Runtime.evaluate` round trip | n | p50 ms | p99 ms | added p50 |", "|---|---|---|---|---|"]
    for k in ("direct", "browser", "context"):
        lines.append(f"| {k} | {rtt[k]['n']} | {rtt[k]['p50']:.3f} | {rtt[k]['p99']:.3f} | "
                     f"{rtt[k]['p50'] - rtt['direct']['p50']:+.3f} |")
    m = results["memory"]
    lines += ["", "| memory, sessions with one page loaded | sessions | browsers | PSS per session | sessions per GiB |",
              "|---|---|---|---|---|"]
    for k in ("browser", "context"):
        per = m[k]["per_session_mib"]
        lines.append(f"| {k} mode | {m[k]['sessions']} | {m[k]['browsers']} | {per:.1f} MiB | {1024 / per:.0f} |")
    empty = results["empty_host_pss_mib"]
    if empty:
        host = sorted(empty)[len(empty) // 2]
        c = m["context"]
        marginal = (sum(c["pss_mib"].values()) - host * c["browsers"]) / c["sessions"]
        lines.append(f"\nAn empty context host: {host:.0f} MiB PSS; each context session with its page adds "
                     f"{marginal:.1f} MiB to it (the rest of the per-session figure is its share of the host).")
    for k, b in results["burst"].items():
        lines += ["", burst_line(k, b)]
    lines += ["", *targets(results)]
    return lines


def burst_line(k: str, b: dict) -> str:
    if k == "context_raw":
        return (f"Burst, context mode, raw CDP (no Playwright driver): {b['sessions']} sessions at once through "
                f"`/v1/connect`, {b['live']} live, {len(b['errors'])} errors; ready p50 {b['ready']['p50'] / 1000:.2f} s, "
                f"p90 {b['ready']['p90'] / 1000:.2f} s; held {b['hold_s']:.0f} s, heartbeat every 2 s: "
                f"n={b['heartbeat']['n']}, p50 {b['heartbeat']['p50']:.1f} ms, p99 {b['heartbeat']['p99']:.1f} ms.")
    return (f"Burst, {k} mode: {b['sessions']} sessions at once through `/v1/connect`, {b['live']} live, "
            f"{len(b['errors'])} errors, in {b['browsers']} browsers; ready p50 {b['ready']['p50'] / 1000:.2f} s, "
            f"p90 {b['ready']['p90'] / 1000:.2f} s; PSS per session {b['pss_per_session_mib']:.1f} MiB "
            f"(MemAvailable drop per session {b['mem_available_drop_per_session_mib']:.1f} MiB); held "
            f"{b['hold_s']:.0f} s, heartbeat every 2 s: n={b['heartbeat']['n']}, p50 "
            f"{b['heartbeat']['p50']:.1f} ms, p99 {b['heartbeat']['p99']:.1f} ms.")


def targets(results: dict) -> list[str]:
    life = results["lifecycle"]

    def ratio(kind: str, base: str, c: str) -> float:
        return life[kind][c]["p50"] / life[base][c]["p50"]

    def status(ok: bool) -> str:
        return "met" if ok else "**missed**"
    lifecycle_targets = [  # (target, kind, baseline, clients, limit)
        ("`/v1/connect` context p50 ≤ 1.25 × floor, 1 client", "connect_context", "floor", "1", 1.25),
        ("`/v1/connect` context p50 ≤ 1.5 × floor, 10 clients", "connect_context", "floor", "10", 1.5),
        ("REST browser mode p50 ≤ 1.5 × fresh floor, 1 client", "rest_browser", "fresh_floor", "1", 1.5),
        ("REST browser mode p50 ≤ cold, 10 clients", "rest_browser", "cold", "10", 1.0)]
    rows = [(what, f"{ratio(kind, base, c):.2f} × {base.replace('_', ' ')}", status(ratio(kind, base, c) <= limit))
            for what, kind, base, c, limit in lifecycle_targets if c in life.get(kind, {}) and c in life.get(base, {})]
    if "memory" in results:
        m = results["memory"]
        share = m["context"]["per_session_mib"] / m["browser"]["per_session_mib"]
        rows.append(("PSS per context session ≤ ⅓ of a browser session's", f"{share:.2f} ×", status(share <= 1 / 3)))
    if "burst" not in results:
        return ["| target | measured (this run) | status |", "|---|---|---|", *(f"| {a} | {v} | {s} |" for a, v, s in rows)]
    b = results["burst"]["context"]
    rows.append(("burst of 60, context mode: ready p90 ≤ 3 s", f"{b['ready']['p90'] / 1000:.2f} s ({b['live']} live, "
                 f"{len(b['errors'])} errors)", status(b["ready"]["p90"] <= 3000 and not b["errors"])))
    rows.append(("burst: memory per session ≤ 25 MiB", f"{b['pss_per_session_mib']:.1f} MiB PSS",
                 status(b["pss_per_session_mib"] <= 25)))
    rows.append(("burst: heartbeat p99 ≤ 50 ms", f"{b['heartbeat']['p99']:.1f} ms", status(b["heartbeat"]["p99"] <= 50)))
    if raw := results["burst"].get("context_raw"):
        rows.append(("the same burst, raw CDP: ready p90 ≤ 3 s / heartbeat p99 ≤ 50 ms",
                     f"{raw['ready']['p90'] / 1000:.2f} s / {raw['heartbeat']['p99']:.1f} ms",
                     status(raw["ready"]["p90"] <= 3000 and raw["heartbeat"]["p99"] <= 50 and not raw["errors"])))
    return ["| target | measured (this run) | status |", "|---|---|---|", *(f"| {a} | {v} | {s} |" for a, v, s in rows)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer lifecycles, a 20 s burst hold")
    parser.add_argument("--browser-burst", action="store_true", help="the 60-session burst in browser mode too")
    parser.add_argument("--kinds", default=",".join(KINDS), help="lifecycle scenarios to run, comma-separated")
    parser.add_argument("--clients", default="1,10", help="concurrencies, comma-separated")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds each client waits between lifecycles")
    parser.add_argument("--burst-only", action="store_true", help="only the context-mode burst")
    parser.add_argument("--burst-hosts", type=int, default=1, help="open context hosts to wait for before it")
    parser.add_argument("--lifecycle-only", action="store_true", help="no relay, memory or burst measurements")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the platform's services, e.g. CONTEXT_FIRST_PAGE=false")
    parser.add_argument("--out", default=str(ROOT / "bench" / "contexts_results.json"))
    args = parser.parse_args()
    started = time.monotonic()
    results = run(args)
    results["duration_s"] = time.monotonic() - started
    results["load_average"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(report(results)))
    print(f"\n{results['duration_s']:.0f} s; load average at the end {results['load_average']}")


if __name__ == "__main__":
    main()
