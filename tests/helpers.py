"""Small helpers for tests that drive the platform over HTTP."""
import asyncio
import http.server
import subprocess
import threading
import time
from contextlib import contextmanager


async def eventually(check, *, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    """Poll `check` (sync or async, returning a truthy value) until it holds; return its value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return last
        except AssertionError as exc:
            last = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


PAGE = b"""<!doctype html><html><head><title>Hello from browserfleet</title></head>
<body><h1 id="greeting">It works</h1></body></html>"""


@contextmanager
def local_page_server(body: bytes = PAGE):
    """Serve one HTML page on 127.0.0.1; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def chromium_pids(marker: str) -> list[int]:
    """PIDs of Chromium processes whose command line mentions `marker` (e.g. a profile root)."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]
