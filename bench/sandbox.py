"""What the local sandbox costs, side by side in one run: `python -m bench.sandbox [--quick]`.

1. Launch: warm_pool's own launch (LocalChromium.launch, as for a waiting session) until DevTools
   answers, plain (root, --no-sandbox, the host's namespaces) and sandboxed, alternating one by one.
2. Lifecycle (create → connect_over_cdp → new page → goto → title → end), 1 and 10 clients, on a
   platform with the sandbox on and one with it off, in alternating blocks; each block loads the
   page two ways: from the host's loopback (a sandboxed browser through warm_pool's host-port
   relay, a `BROWSER_HOST_PORTS` app) and from a test host of the bench's own in a network
   namespace at an address the sandbox treats as public (through the veth and NAT, as a
   customer's page from the internet comes). Nothing is sent anywhere else: the test host's route
   is checked first.
Writes bench/sandbox_results.json and prints a table.
"""
import argparse
import asyncio
import contextlib
import http.server
import json
import os
import random
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

from bench import scenarios
from bench.__main__ import BENCH_PLANS
from services.warm_pool.adapters import netns
from services.warm_pool.adapters.local import LocalChromium
from services.warm_pool.adapters.sandbox import Sandbox
from services.warm_pool.adapters.sandbox_config import SandboxConfig
from services.warm_pool.settings import default_chromium
from tests import infra
from tests.e2e.platform import WEBHOOK_SECRET, Platform
from tests.helpers import _Pages, local_page_server, page_port
from tests.security.nettest import ip, route_dev

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
    out = {name: {"ready_p50_ms": statistics.median(v) * 1000, "ready_p90_ms": p(v, 0.9) * 1000,
                  "kill_p50_ms": statistics.median(kills[name]) * 1000, "n": len(v)}
           for name, v in times.items()}
    # Each round launches both, one after the other: the median of the rounds' differences is
    # the sandbox's cost with the host's drift between rounds taken out.
    out["paired_delta_p50_ms"] = statistics.median(s - q for s, q in zip(times["sandboxed"], times["plain"])) * 1000
    return out


@contextlib.contextmanager
def page_host(loopback_url: str):
    """The same page server (the same handler and pages) on a test host in a network namespace of
    our own, at 203.0.113.N (TEST-NET-3: public to the sandbox's filter, routed through a veth
    of its own, never off this machine). Yields the page's URL there."""
    n = random.randrange(1, 250)
    tag = f"{os.getpid() % 10000}{n}"[-6:]
    ns, veth = f"bfbench-{tag}", f"bfb{tag}"
    host_side, ns_side, address = f"10.97.{n}.1", f"10.97.{n}.2", f"203.0.113.{n}"
    server = None
    ip("netns", "add", ns)
    try:
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", f"{host_side}/30", "dev", veth)
        ip("link", "set", veth, "up")
        for args in (("addr", "add", f"{ns_side}/30", "dev", "eth0"), ("link", "set", "eth0", "up"),
                     ("link", "set", "lo", "up"), ("route", "add", "default", "via", host_side),
                     ("addr", "add", f"{address}/32", "dev", "lo")):
            ip("-n", ns, *args)
        ip("route", "add", f"{address}/32", "via", ns_side, "dev", veth)
        if route_dev(address) != veth:  # never serve (or send) anything unless it stays on this machine
            raise RuntimeError(f"{address} is not routed to the bench's test host")

        def listen() -> socket.socket:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, 80))
            sock.listen(128)
            return sock
        server = http.server.ThreadingHTTPServer((address, 80), _Pages, bind_and_activate=False)
        server.socket = netns.in_netns(f"/run/netns/{ns}", listen)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://{address}/" + loopback_url.split("/", 3)[3]
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def _block(platform, pages: dict[str, str], quick: bool) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=60) as http, async_playwright() as pw:
        tenant = await scenarios.new_tenant(http, platform, "bench", WEBHOOK_SECRET, idle=10)
        out = {}
        for c, iters in ((1, 10 if quick else 40), (10, 20 if quick else 80)):
            for kind, url in pages.items():
                out[f"{kind}_c{c}"] = (await scenarios.lifecycle(http, pw, tenant, url, c, iters))["p50"]
                await scenarios.wait_idle(platform, 10)
        return out


KEYS = ("netns_c1", "netns_c10", "relay_c1", "relay_c10")


def lifecycles(quick: bool, blocks: int = 2) -> dict:
    """Platforms with the sandbox on and off, in alternating blocks (the infra helpers are sync)."""
    out: dict[str, dict[str, list[float]]] = {mode: {k: [] for k in KEYS} for mode in ("on", "off")}
    with (infra.postgres_server() as pg, infra.rabbitmq_server() as mq, local_page_server() as page_url,
          page_host(page_url) as host_url):
        pages = {"netns": host_url, "relay": page_url}
        for block in range(blocks):
            for mode in ("on", "off") if block % 2 == 0 else ("off", "on"):
                workdir = Path(tempfile.mkdtemp(prefix=f"bf-bench-{mode}-"))
                plans = workdir / "plans.json"
                plans.write_text(json.dumps(BENCH_PLANS))
                with infra.fresh_database(pg) as db, infra.fresh_vhost(mq) as vhost:
                    platform = Platform(db, vhost, workdir, PLANS_FILE=str(plans), LOG_LEVEL="WARNING",
                                        BROWSER_SANDBOX=mode).start()
                    try:
                        result = asyncio.run(_block(platform, pages, quick))
                    finally:
                        platform.stop()
                for c, p50 in result.items():
                    out[mode][c].append(p50)
                print(f"  lifecycle block {block + 1}/{blocks}, sandbox {mode}: "
                      + ", ".join(f"{k} {result[k]:.0f} ms" for k in KEYS), flush=True)
    return {mode: {c: statistics.median(v) for c, v in per.items()} for mode, per in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-lifecycle", action="store_true")
    parser.add_argument("--launches", type=int, default=None, help="launch rounds (default 12, 6 with --quick)")
    args = parser.parse_args()
    results = {"launch": asyncio.run(launches(args.launches or (6 if args.quick else 12)))}
    if not args.no_lifecycle:
        results["lifecycle_p50_ms"] = lifecycles(args.quick)
    (ROOT / "bench" / "sandbox_results.json").write_text(json.dumps(results, indent=2))
    launch = results["launch"]
    print(f"launch to DevTools ready, p50: plain {launch['plain']['ready_p50_ms']:.0f} ms, sandboxed "
          f"{launch['sandboxed']['ready_p50_ms']:.0f} ms (+{launch['sandboxed']['ready_p50_ms'] - launch['plain']['ready_p50_ms']:.0f} ms); "
          f"p90 {launch['plain']['ready_p90_ms']:.0f} / {launch['sandboxed']['ready_p90_ms']:.0f} ms; "
          f"kill p50 {launch['plain']['kill_p50_ms']:.0f} / {launch['sandboxed']['kill_p50_ms']:.0f} ms; "
          f"paired difference p50 +{launch['paired_delta_p50_ms']:.0f} ms over {launch['plain']['n']} rounds")
    if "lifecycle_p50_ms" in results:
        life = results["lifecycle_p50_ms"]
        for key in KEYS:
            print(f"lifecycle {key}: sandbox off {life['off'][key]:.0f} ms, on {life['on'][key]:.0f} ms "
                  f"({life['on'][key] / life['off'][key]:.3f}x)")


if __name__ == "__main__":
    main()
