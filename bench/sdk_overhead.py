"""What the Python SDK adds to a create, side by side with raw httpx, in one run.

1. Client side alone: `bf.sessions.create()` against `httpx.post(...)` + `.json()` on the same
   in-process mock transport answering a canned 201, so only the client's own work differs
   (request building, the Idempotency-Key, pydantic parsing into typed models).
2. Against the running platform (warm pool), interleaved create+end: raw httpx without a key, raw
   httpx with an Idempotency-Key (what the SDK sends: the server stores it, so it has a cost of its
   own), and the SDK, each on a connection of its own. Creates only are timed; ends are untimed.

    python -m bench.sdk_overhead [--local 5000] [--creates 60] [--settle 0.5]
"""
import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

import browserfleet  # noqa: E402
from bench import scenarios  # noqa: E402
from bench.__main__ import BENCH_PLANS  # noqa: E402
from tests import infra  # noqa: E402
from tests.e2e.platform import WEBHOOK_SECRET, Platform  # noqa: E402

# Five warm browsers are plenty for one create at a time, and fill quickly even with the sandbox.
PLANS = {"bench": {**BENCH_PLANS["bench"], "prewarm_browsers": 5}}
CANNED = {"id": str(uuid.uuid4()), "status": "running", "browser": "chromium", "warm": True, "keep_alive": False,
          "timeout_s": 300, "idle_timeout_s": 60, "created_at": "2026-12-01T09:00:00Z",
          "started_at": "2026-12-01T09:00:00.05Z", "expires_at": "2026-12-01T09:05:00Z", "ended_at": None,
          "duration_ms": None, "cost": None, "end_reason": None, "cdp_url": "ws://127.0.0.1:8000/v1/sessions/x/cdp",
          "remaining_credits": 4999}


def median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


def client_side(iterations: int) -> dict:
    body = json.dumps(CANNED).encode()
    transport = httpx.MockTransport(lambda request: httpx.Response(201, content=body,
                                                                   headers={"content-type": "application/json"}))
    raw = httpx.Client(transport=transport, timeout=60)
    bf = browserfleet.Browserfleet(api_key="bf_bench", base_url="http://bench.test",
                                   http_client=httpx.Client(transport=transport))
    headers = {"authorization": "Bearer bf_bench"}

    def raw_create():
        r = raw.post("http://bench.test/v1/sessions", json={}, headers=headers)
        r.raise_for_status()
        return r.json()

    times: dict[str, list[float]] = {"raw_httpx": [], "sdk": []}
    calls = {"raw_httpx": raw_create, "sdk": bf.sessions.create}
    for _ in range(200):  # warm-up
        raw_create(), bf.sessions.create()
    for i in range(iterations):
        for name in (("raw_httpx", "sdk") if i % 2 else ("sdk", "raw_httpx")):
            t = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t)
    out = {name: {"median_us": round(median_us(v), 1), "n": len(v)} for name, v in times.items()}
    out["sdk_adds_us"] = round(out["sdk"]["median_us"] - out["raw_httpx"]["median_us"], 1)
    return out


def against_platform(creates: int, settle: float) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bf-bench-sdk-"))
    plans = workdir / "plans.json"
    plans.write_text(json.dumps(PLANS))
    with infra.postgres_server() as pg, infra.rabbitmq_server() as mq, \
            infra.fresh_database(pg) as db, infra.fresh_vhost(mq) as vhost:
        platform = Platform(db, vhost, workdir, PLANS_FILE=str(plans), LOG_LEVEL="WARNING").start()
        try:
            return _interleaved(asyncio.run(_tenant(platform)), creates, settle)
        finally:
            platform.stop()


async def _tenant(platform) -> scenarios.Tenant:
    """A paying "bench" tenant whose warm pool is full, as the warm pool itself reports it."""
    async with httpx.AsyncClient(timeout=60) as http:
        tenant_id = await scenarios.pay(http, platform, "bench", WEBHOOK_SECRET)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            key = await http.post(f"{platform.urls['sessions']}/v1/admin/tenants/{tenant_id}/api-keys",
                                  headers=platform.admin)
            pool = (await http.get(f"{platform.urls['warm_pool']}/v1/pool", headers=platform.admin)).json()
            idle = [t["idle"] for t in pool["tenants"] if t["tenant_id"] == tenant_id]
            if key.status_code == 201 and idle and idle[0] >= PLANS["bench"]["prewarm_browsers"]:
                return scenarios.Tenant(platform, tenant_id, key.json()["api_key"])
            await asyncio.sleep(0.2)
    raise TimeoutError("the bench tenant's pool never filled")


def _interleaved(tenant, creates: int, settle: float) -> dict:
    url = f"{tenant.sessions}/v1/sessions"
    # Each kind has a client (a connection) of its own and ends its own sessions through it, so
    # every connection sees the same traffic.
    raw, raw_keyed = httpx.Client(timeout=60), httpx.Client(timeout=60)
    bf = browserfleet.Browserfleet(api_key=tenant.key, base_url=tenant.sessions, max_retries=0)

    def raw_create(http: httpx.Client, key: bool):
        headers = {**tenant.auth, **({"idempotency-key": str(uuid.uuid4())} if key else {})}
        r = http.post(url, json={}, headers=headers)
        r.raise_for_status()
        return r.json()["id"], r.json()["warm"]

    def raw_end(http: httpx.Client, session_id: str) -> None:
        http.post(f"{url}/{session_id}/end", headers=tenant.auth).raise_for_status()

    def sdk_create():
        s = bf.sessions.create()
        return s.id, s.warm

    calls = {"raw_httpx": lambda: raw_create(raw, False), "raw_httpx_with_key": lambda: raw_create(raw_keyed, True),
             "sdk": sdk_create}
    ends = {"raw_httpx": lambda sid: raw_end(raw, sid), "raw_httpx_with_key": lambda sid: raw_end(raw_keyed, sid),
            "sdk": bf.sessions.end}
    rounds: list[dict[str, float]] = []  # one create of each kind per round, warm ones only
    cold = {name: 0 for name in calls}
    order = list(calls)
    for i in range(creates + 5):
        this: dict[str, float] = {}
        for name in order[i % 3:] + order[:i % 3]:  # rotate who goes first
            t = time.perf_counter()
            session_id, warm = calls[name]()
            elapsed = time.perf_counter() - t
            ends[name](session_id)
            if warm:
                this[name] = elapsed
            elif i >= 5:
                cold[name] += 1
            time.sleep(settle)  # let the pool refill, so each create takes a warm browser
        if i >= 5:  # the first rounds warm up connections on both sides
            rounds.append(this)
        print(f"\r  platform creates {i + 1}/{creates + 5}", end="", file=sys.stderr)
    print(file=sys.stderr)
    out: dict = {}
    for name in calls:
        ms = sorted(r[name] * 1000 for r in rounds if name in r)
        out[name] = {"median_ms": round(statistics.median(ms), 2), "p25_ms": round(ms[len(ms) // 4], 2),
                     "p75_ms": round(ms[3 * len(ms) // 4], 2), "n": len(ms), "not_warm": cold[name]}

    def paired(a: str, b: str) -> dict:
        """Median of the per-round differences: both creates of a round ran within a second of each other."""
        diffs = [(r[a] - r[b]) * 1000 for r in rounds if a in r and b in r]
        return {"median_ms": round(statistics.median(diffs), 2), "rounds": len(diffs)}
    out["sdk_minus_raw_with_key"] = paired("sdk", "raw_httpx_with_key")
    out["sdk_minus_raw"] = paired("sdk", "raw_httpx")
    out["key_minus_no_key"] = paired("raw_httpx_with_key", "raw_httpx")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", type=int, default=5000, help="client-side iterations of each")
    parser.add_argument("--creates", type=int, default=60, help="platform creates of each kind")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds between creates")
    args = parser.parse_args()
    result = {"client_side": client_side(args.local), "platform": against_platform(args.creates, args.settle)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
