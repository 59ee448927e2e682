"""The measured scenarios. Each returns plain numbers (seconds) for the report."""
import asyncio
import json
import random
import time
import uuid

import aio_pika
import httpx
import websockets
from playwright.async_api import Playwright

from bench import chromium, procs
from bench.stats import Progress, summary
from shared.cdp import CdpCommands
from tests import stripe_fakes


class Tenant:
    def __init__(self, platform, tenant_id: str, api_key: str):
        self.platform, self.id, self.key = platform, tenant_id, api_key
        self.auth = {"authorization": f"Bearer {api_key}"}
        self.sessions = platform.urls["sessions"]


async def pay(http: httpx.AsyncClient, platform, plan: str, secret: str) -> str:
    tenant_id = str(uuid.uuid4())
    customer, sub = f"cus_{uuid.uuid4().hex[:12]}", f"sub_{uuid.uuid4().hex[:12]}"
    now = int(time.time())
    for event in (stripe_fakes.checkout_session_completed(tenant_id, plan, customer, sub),
                  stripe_fakes.invoice_paid(tenant_id, plan, customer, sub, now, now + 30 * 86400)):
        body = json.dumps(event).encode()
        r = await http.post(f"{platform.urls['billing']}/webhooks/stripe", content=body,
                            headers={"stripe-signature": stripe_fakes.sign(body, secret)})
        r.raise_for_status()
    return tenant_id


async def new_tenant(http, platform, plan: str, secret: str, *, idle: int) -> Tenant:
    tenant_id = await pay(http, platform, plan, secret)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = await http.post(f"{platform.urls['sessions']}/v1/admin/tenants/{tenant_id}/api-keys", headers=platform.admin)
        if r.status_code == 201:
            tenant = Tenant(platform, tenant_id, r.json()["api_key"])
            break
        await asyncio.sleep(0.1)
    else:
        raise TimeoutError("tenant never reached sessions")
    await wait_idle(platform, idle)
    return tenant


async def wait_idle(platform, idle: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(procs.browser_groups(str(platform.profile_root))) >= idle:
            await asyncio.sleep(1.0)  # let the last ones finish starting
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"pool never reached {idle} browsers")


RETRIED_503: list[int] = [0]


async def create(http, tenant: Tenant) -> tuple[dict, float]:
    """One create as a client would do it: a 503 (no browser right now) is retried after a
    short pause, and its time counts in the latency."""
    t = time.perf_counter()
    for attempt in range(20):
        r = await http.post(f"{tenant.sessions}/v1/sessions", json={}, headers=tenant.auth)
        if r.status_code != 503 or attempt == 19:
            break
        RETRIED_503[0] += 1
        await asyncio.sleep(0.2)
    elapsed = time.perf_counter() - t
    r.raise_for_status()
    return r.json(), elapsed


async def end(http, tenant: Tenant, session_id: str) -> None:
    (await http.post(f"{tenant.sessions}/v1/sessions/{session_id}/end", headers=tenant.auth)).raise_for_status()


async def drive(pw: Playwright, ws_url: str, page_url: str) -> str:
    browser = await pw.chromium.connect_over_cdp(ws_url)
    context = browser.contexts[0] if browser.contexts else await browser.new_context()
    page = await context.new_page()
    await page.goto(page_url)
    title = await page.title()
    await page.close()
    await browser.close()
    return title


async def _clients(concurrency: int, iterations: int, label: str, one) -> tuple[list[float], float]:
    progress = Progress(label, iterations)
    latencies: list[float] = []
    remaining = iterations

    async def client():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - t)
            progress.step()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def lifecycle(http, pw, tenant: Tenant, page_url: str, concurrency: int, iterations: int):
    async def one():
        session, _ = await create(http, tenant)
        await drive(pw, session["cdp_url"], page_url)
        await end(http, tenant, session["id"])

    lat, wall = await _clients(concurrency, iterations, f"platform lifecycle c={concurrency}", one)
    return {**summary(lat), "per_s": len(lat) / wall}


async def floor(pw, page_url: str, concurrency: int, iterations: int):
    browsers = [await chromium.launch_async() for _ in range(concurrency)]
    free = asyncio.Queue()
    for b in browsers:
        free.put_nowait(b)

    async def one():
        b = await free.get()
        try:
            await drive(pw, b.ws_url, page_url)
        finally:
            free.put_nowait(b)

    try:
        lat, wall = await _clients(concurrency, iterations, f"floor (pre-launched) c={concurrency}", one)
    finally:
        for b in browsers:
            b.kill()
    return {**summary(lat), "per_s": len(lat) / wall}


async def cold(pw, page_url: str, concurrency: int, iterations: int):
    async def one():
        b = await chromium.launch_async()
        try:
            await drive(pw, b.ws_url, page_url)
        finally:
            await asyncio.to_thread(b.kill)

    lat, wall = await _clients(concurrency, iterations, f"cold launch c={concurrency}", one)
    return {**summary(lat), "per_s": len(lat) / wall}


async def create_latency(http, tenant: Tenant, iterations: int, *, settle: float):
    """POST /v1/sessions alone, split by the path it took; `settle` lets the pool refill between creates."""
    by_path: dict[bool, list[float]] = {True: [], False: []}
    progress = Progress(f"create latency (settle {settle}s)", iterations)
    for _ in range(iterations):
        session, elapsed = await create(http, tenant)
        by_path[bool(session["warm"])].append(elapsed)
        await end(http, tenant, session["id"])
        progress.step()
        await asyncio.sleep(settle)
    return {"warm": summary(by_path[True]), "on_demand": summary(by_path[False])}


async def on_demand_latency(http, platform, plan: str, secret: str, iterations: int):
    """The first create of a tenant with no pre-warmed browsers, one fresh tenant per sample: the
    pool sizes itself from each tenant's lease rate, so a tenant's later creates are warm."""
    by_path: dict[bool, list[float]] = {True: [], False: []}
    progress = Progress("create latency, on demand", iterations)
    for _ in range(iterations):
        tenant = await new_tenant(http, platform, plan, secret, idle=0)
        session, elapsed = await create(http, tenant)
        by_path[bool(session["warm"])].append(elapsed)
        await end(http, tenant, session["id"])
        progress.step()
    return {"warm": summary(by_path[True]), "on_demand": summary(by_path[False])}


async def launch_capacity(samples: int = 8) -> float:
    """Browsers per second this host can launch, two at a time (as the pool does on 2 cores)."""
    started = time.perf_counter()
    for _ in range(samples // 2):
        pair = await asyncio.gather(chromium.launch_async(), chromium.launch_async())
        for b in pair:
            b.kill()
    return samples / (time.perf_counter() - started)


async def warm_hits(http, tenant: Tenant, rate: float, arrivals: int, hold_s: float):
    """Poisson arrivals at `rate`/s, each session held `hold_s`; returns the warm-hit ratio."""
    warm, total, tasks = 0, 0, []
    progress = Progress(f"warm hits at {rate:.2f}/s", arrivals)

    async def one():
        nonlocal warm, total
        try:
            session, _ = await create(http, tenant)
        except httpx.HTTPStatusError:
            total += 1
            progress.step()
            return
        warm += bool(session["warm"])
        total += 1
        await asyncio.sleep(hold_s)
        await end(http, tenant, session["id"])
        progress.step()

    for _ in range(arrivals):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(random.expovariate(rate))
    await asyncio.gather(*tasks)
    return warm / max(total, 1)


async def provisioning_latency(http, platform, plan: str, secret: str, rabbitmq_url: str, iterations: int):
    connection = await aio_pika.connect_robust(rabbitmq_url)
    channel = await connection.channel()
    exchange = await channel.get_exchange("browserfleet.events")
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, "provisioner.tenant_provisioned")
    arrived: dict[str, float] = {}

    async def on_message(message):
        async with message.process():
            arrived[json.loads(message.body)["tenant_id"]] = time.perf_counter()

    await queue.consume(on_message)
    lat = []
    progress = Progress("webhook -> tenant.provisioned", iterations)
    for _ in range(iterations):
        t = time.perf_counter()
        tenant_id = await pay(http, platform, plan, secret)
        while tenant_id not in arrived:
            await asyncio.sleep(0.002)
        lat.append(arrived[tenant_id] - t)
        progress.step()
    await connection.close()
    return summary(lat)


async def _evaluate_loop(ws_url: str, n: int) -> list[float]:
    async with websockets.connect(ws_url, max_size=None, compression=None) as ws:
        call = CdpCommands(ws).call
        target = (await call("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        lat = []
        for i in range(n):
            t = time.perf_counter()
            await call("Runtime.evaluate", {"expression": f"{i} + 1"}, session)
            lat.append(time.perf_counter() - t)
        return lat


async def relay_overhead(http, tenant: Tenant, n: int):
    direct_browser = await chromium.launch_async()
    try:
        direct = await _evaluate_loop(direct_browser.ws_url, n)
    finally:
        direct_browser.kill()
    session, _ = await create(http, tenant)
    try:
        relayed = await _evaluate_loop(session["cdp_url"], n)
    finally:
        await end(http, tenant, session["id"])
    return {"direct": summary(direct), "relayed": summary(relayed)}


async def relay_share(http, pw, tenant: Tenant, page_url: str, database_url: str, iterations: int):
    """The relay's share of a page-load lifecycle: the same connect → goto → title on leased
    browsers, alternately through the gateway and straight to the browser's own DevTools URL."""
    import asyncpg
    conn = await asyncpg.connect(database_url)
    by_path: dict[str, list[float]] = {"relayed": [], "direct": []}
    progress = Progress("relay share of a page load", iterations)
    try:
        for i in range(iterations):
            session, _ = await create(http, tenant)
            path = "direct" if i % 2 else "relayed"
            url = session["cdp_url"] if path == "relayed" else await conn.fetchval(
                "SELECT browser_ws_url FROM sessions.sessions WHERE id = $1::text::uuid", session["id"])
            t = time.perf_counter()
            await drive(pw, url, page_url)
            by_path[path].append(time.perf_counter() - t)
            await end(http, tenant, session["id"])
            progress.step()
    finally:
        await conn.close()
    return {k: summary(v) for k, v in by_path.items()}


async def memory_and_cost(http, pw, tenant: Tenant, page_url: str, active_seconds: float):
    marker = str(tenant.platform.profile_root)
    groups = procs.browser_groups(marker)
    idle_pss = [procs.pss_kib(pids) for pids in groups.values()]
    before = set(groups)
    session, _ = await create(http, tenant)
    browser = await pw.chromium.connect_over_cdp(session["cdp_url"])
    context = browser.contexts[0] if browser.contexts else await browser.new_context()
    page = await context.new_page()
    await page.goto(page_url)
    # The leased browser is the group that was idle before and whose CPU grows now; take the max PSS.
    groups = procs.browser_groups(marker)
    cpu0 = {g: procs.cpu_seconds(p) for g, p in groups.items()}
    samples = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < active_seconds:
        await page.evaluate("document.title = String(Date.now())")
        await asyncio.sleep(1)
        groups = procs.browser_groups(marker)
        samples.append(max(procs.pss_kib(p) for g, p in groups.items() if g in before))
    elapsed = time.perf_counter() - t0
    cpu1 = {g: procs.cpu_seconds(p) for g, p in groups.items()}
    active_cpu = max(cpu1[g] - cpu0.get(g, 0) for g in cpu1 if g in before)
    await browser.close()
    await end(http, tenant, session["id"])
    return {"idle_pss_mib": [k / 1024 for k in idle_pss], "active_pss_mib": max(samples) / 1024,
            "active_cpu_s": active_cpu, "active_seconds": elapsed,
            "mem_available_mib": procs.mem_available_kib() / 1024}
