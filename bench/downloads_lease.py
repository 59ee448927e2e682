"""What pointing a browser's downloads at its session's directory adds to a lease (issue 18): the
`Browser.setDownloadBehavior` warm_pool sends at lease, over the connection it kept from the
browser's launch, against over a connection opened then.

`python -m bench.downloads_lease [ROUNDS]` — unsandboxed local browsers, one at a time."""
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from services.warm_pool.adapters.local import LocalChromium
from services.warm_pool.settings import default_chromium


async def run(rounds: int) -> dict[str, list[float]]:
    chromium = LocalChromium(chromium_path=default_chromium(), profile_root=Path(tempfile.mkdtemp()))
    took: dict[str, list[float]] = {"kept from launch": [], "opened at lease": []}
    try:
        for i in range(rounds):
            browser_id = uuid.uuid4()
            launched = await chromium.launch(browser_id, urgent=True)
            way = "kept from launch" if i % 2 == 0 else "opened at lease"
            if way == "opened at lease":
                await chromium.contexts.forget(browser_id)
            started = time.perf_counter()
            await chromium.browser_downloads(browser_id, cdp_ws_url=launched.cdp_ws_url, session_id=uuid.uuid4())
            took[way].append((time.perf_counter() - started) * 1000)
            await chromium.kill(browser_id)
    finally:
        await chromium.close()
    return took


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    for way, ms in asyncio.run(run(rounds)).items():
        ms.sort()
        print(f"{way}: n={len(ms)} median {statistics.median(ms):.2f} ms, p90 {ms[int(len(ms) * 0.9)]:.2f} ms")


if __name__ == "__main__":
    main()
