"""What capturing and restoring a context's web state costs, by origins and state size.

`python -m bench.storage_state [--runs 5]` — one headless shell (the pool's default binary, plain
unsandboxed flags); a source context is filled with the state by `restore`, then `capture` from it
and `restore` into a fresh context are each timed `--runs` times, sequentially (one page) and with
four pages in parallel. Medians, in ms per call and per origin. Each origin is a site of its own
(`http://site<i>.localhost:20000`, so each visit starts a renderer, as distinct sites a tenant
visited would); nothing listens there and nothing is resolved: every request of the visiting page
is answered by storage_state itself. "~1 MiB" is 8 localStorage items and 64 IndexedDB records of
16 KiB each per origin.
"""
import argparse
import asyncio
import statistics
import time

from services.warm_pool.adapters.cdp_connection import CdpConnection
from services.warm_pool.adapters.storage_state import capture, restore
from tests.chromium import Chromium

SIZES = {"small": (4, 4, 100), "~1 MiB": (8, 64, 16 * 1024)}  # localStorage items, IDB records, bytes each


def origin_state(origin: str, size: str) -> dict:
    items, records, each = SIZES[size]
    return {"origin": origin,
            "localStorage": [{"name": f"k{i}", "value": "v" * each} for i in range(items)],
            "indexedDB": [{"name": "bench", "version": 1, "stores": [{
                "name": "records", "keyPath": "id", "autoIncrement": False,
                "indexes": [{"name": "by_n", "keyPath": "n", "unique": False, "multiEntry": False}],
                "records": [{"key": f"r{i}", "value": {"id": f"r{i}", "n": i, "body": "x" * each,
                                                       "at": {"__bf": "Date", "v": 1_700_000_000_000}}}
                            for i in range(records)]}]}]}


async def new_context(cdp: CdpConnection) -> str:
    return (await cdp.call("Target.createBrowserContext", {}, timeout_s=10))["browserContextId"]


async def measure(browser: Chromium, cdp: CdpConnection, n_origins: int, size: str, concurrency: int,
                  runs: int) -> tuple[float, float]:
    origins = [f"http://site{i}.localhost:20000" for i in range(n_origins)]  # a site each
    state = {"cookies": [{"name": "sid", "value": "s" * 32, "domain": "site0.localhost", "path": "/", "session": True}],
             "origins": [origin_state(o, size) for o in origins]}
    source = await new_context(cdp)
    assert await restore(browser.ws_url, context_id=source, state=state, timeout_s=60) == []
    captures, restores = [], []
    for _ in range(runs):
        started = time.perf_counter()
        got = await capture(browser.ws_url, context_id=source, origins=origins, timeout_s=60,
                            concurrency=concurrency)
        captures.append(time.perf_counter() - started)
        assert len(got["origins"]) == n_origins and not got["errors"], got["errors"]
        target = await new_context(cdp)
        started = time.perf_counter()
        assert await restore(browser.ws_url, context_id=target, state=got, timeout_s=60, concurrency=concurrency) == []
        restores.append(time.perf_counter() - started)
        await cdp.call("Target.disposeBrowserContext", {"browserContextId": target}, timeout_s=30)
    await cdp.call("Target.disposeBrowserContext", {"browserContextId": source}, timeout_s=30)
    return statistics.median(captures), statistics.median(restores)


async def main(runs: int) -> None:
    browser = await Chromium.launch()
    try:
        cdp = await CdpConnection.connect(browser.ws_url, timeout_s=10, max_message_bytes=2**24)
        try:
            await measure(browser, cdp, 1, "small", 1, 1)  # warm-up: the first renderer, the first database
            print(f"storage_state, medians of {runs} runs (ms per call; per origin in brackets)")
            print(f"{'origins':>7} {'state/origin':>12} {'pages':>5} {'capture':>16} {'restore':>16}")
            for n_origins in (0, 1, 5, 20):
                for size in (("small",) if n_origins == 0 else SIZES):
                    for concurrency in (1, 4):
                        if n_origins <= 1 and concurrency > 1:
                            continue
                        cap, res = await measure(browser, cdp, n_origins, size, concurrency, runs)
                        per = max(n_origins, 1)
                        print(f"{n_origins:>7} {size if n_origins else '-':>12} {concurrency:>5} "
                              f"{cap * 1000:8.0f} ({cap * 1000 / per:4.0f}) {res * 1000:8.0f} ({res * 1000 / per:4.0f})",
                              flush=True)
        finally:
            await cdp.close()
    finally:
        await browser.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
