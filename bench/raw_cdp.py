"""The context burst driven by a bare CDP client (shared.cdp's CdpCommands on one websocket per
session), with no Playwright driver between the benchmark and the platform (`bench.contexts`:
"context_raw"): it tells the driver's share of the burst's ready times and heartbeat apart."""
import asyncio
import time

import websockets

from bench.stats import Progress, summary
from shared.cdp import CdpCommands


async def open_page(cdp: CdpCommands, page_url: str, title: str) -> str:
    """A page of the session's own context at `page_url`, loaded; its CDP session id."""
    target = (await cdp.call("Target.createTarget", {"url": page_url}))["targetId"]
    session = (await cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
    check = {"expression": "document.readyState === 'complete' && document.title", "returnByValue": True}
    while (await cdp.call("Runtime.evaluate", check, session_id=session))["result"].get("value") != title:
        await asyncio.sleep(0.05)
    return session


async def burst(connect_url: str, page_url: str, count: int, hold_s: float, *, title: str = "bench") -> dict:
    """`count` sessions at once through /v1/connect, each opening and loading a page, then a
    `Runtime.evaluate` heartbeat every 2 s on each page for `hold_s`."""
    ready: list[float] = []
    beats: list[float] = []
    errors: list[str] = []
    go = asyncio.Event()
    progress = Progress(f"raw burst {count}", count)
    started = time.perf_counter()

    async def one() -> None:
        try:
            ws = await websockets.connect(connect_url, max_size=None, open_timeout=120, ping_interval=None)
        except Exception as exc:  # counted and reported
            errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            progress.step()
            return
        async with ws:
            cdp = CdpCommands(ws, timeout_s=120)
            try:
                session = await open_page(cdp, page_url, title)
                ready.append(time.perf_counter() - started)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
                return
            finally:
                progress.step()
            try:
                await go.wait()
                until = time.perf_counter() + hold_s
                while time.perf_counter() < until:
                    t = time.perf_counter()
                    await cdp.call("Runtime.evaluate", {"expression": "Date.now()"}, session_id=session)
                    beats.append(time.perf_counter() - t)
                    await asyncio.sleep(max(0.0, 2.0 - (time.perf_counter() - t)))
            except Exception as exc:
                errors.append(f"heartbeat {type(exc).__name__}")

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    while len(ready) + len(errors) < count:
        await asyncio.sleep(0.1)
    live = len(ready)
    go.set()
    await asyncio.gather(*tasks)
    return {"sessions": count, "live": live, "errors": errors, "ready": summary(ready),
            "heartbeat": summary(beats), "hold_s": hold_s}
