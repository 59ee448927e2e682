"""Small helpers for tests that drive the platform over HTTP."""
import asyncio
import http.server
import subprocess
import threading
import time
import uuid
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


def wait_for(check, *, timeout: float = 20.0, what: str = "condition"):
    """`eventually` for synchronous code: poll `check` until it returns a truthy value; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


PAGE = b"""<!doctype html><html><head><title>Hello from browserfleet</title></head>
<body><h1 id="greeting">It works</h1></body></html>"""


# A page that writes (`putState(v)`) and reads back (`readState()`) what a profile keeps: a persistent
# and a session cookie, local storage and an IndexedDB record.
STATE_PAGE = b"""<!doctype html><title>profile page</title><script>
function db() {
  return new Promise((ok, fail) => {
    const r = indexedDB.open("bf", 1);
    r.onupgradeneeded = () => r.result.createObjectStore("s");
    r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error);
  });
}
window.putState = async (v) => {
  document.cookie = "kept=" + v + "; path=/; max-age=3600";
  document.cookie = "sess=" + v + "; path=/";
  localStorage.setItem("local", v);
  const d = await db();
  await new Promise((ok, fail) => { const t = d.transaction("s", "readwrite"); t.objectStore("s").put(v, "k");
                                     t.oncomplete = ok; t.onerror = () => fail(t.error); });
  d.close();
  return true;
};
window.readState = async () => {
  const d = await db();
  const v = await new Promise((ok) => { const r = d.transaction("s").objectStore("s").get("k");
                                         r.onsuccess = () => ok(r.result === undefined ? null : r.result); });
  d.close();
  return {cookie: document.cookie, local: localStorage.getItem("local"), idb: v};
};
</script><p>state</p>"""


class _Pages(http.server.BaseHTTPRequestHandler):
    """Serves whatever page a test registered under its path."""
    pages: dict[str, bytes] = {}
    attachments: dict[str, tuple[bytes, str]] = {}  # path -> (body, the file name it suggests)

    def do_GET(self):
        path = self.path.split("?")[0]
        body = self.pages.get(path)
        if path in self.attachments:
            body, filename = self.attachments[path]
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if path in self.attachments:
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-disposition", f'attachment; filename="{filename}"')
        else:
            self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


_page_server: http.server.ThreadingHTTPServer | None = None
_page_lock = threading.Lock()


def page_port() -> int:
    """The one loopback port of this test process's pages. Sandboxed browsers reach only the host
    ports in BROWSER_HOST_PORTS, so every warm_pool a test starts lists this one."""
    global _page_server
    with _page_lock:
        if _page_server is None:
            _page_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
            _page_server.daemon_threads = True
            threading.Thread(target=_page_server.serve_forever, daemon=True).start()
        return _page_server.server_address[1]


@contextmanager
def local_page_server(body: bytes = PAGE):
    """Serve one HTML page on 127.0.0.1 (on `page_port()`, a path of its own); yields its URL."""
    path = f"/{uuid.uuid4().hex}/"
    _Pages.pages[path] = body
    try:
        yield f"http://127.0.0.1:{page_port()}{path}"
    finally:
        _Pages.pages.pop(path, None)


@contextmanager
def local_download(body: bytes, filename: str):
    """Serve `body` as a download (`Content-Disposition: attachment; filename=…`) on `page_port()`;
    yields its URL."""
    path = f"/{uuid.uuid4().hex}/file"
    _Pages.attachments[path] = (body, filename)
    try:
        yield f"http://127.0.0.1:{page_port()}{path}"
    finally:
        _Pages.attachments.pop(path, None)


def chromium_pids(marker: str) -> list[int]:
    """PIDs of Chromium processes whose command line mentions `marker` (e.g. a profile root)."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]
