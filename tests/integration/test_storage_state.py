"""storage_state against real headless Chromium: a context's cookies, localStorage and IndexedDB
captured and put into another context (and another browser), the origins a context's pages showed,
and what a hung page or an oversized state does to a capture."""
import asyncio
import contextlib
import http.server
import json
import threading
import uuid

import pytest
import pytest_asyncio

from services.warm_pool.adapters import storage_state
from services.warm_pool.adapters.cdp_connection import CdpConnection
from services.warm_pool.adapters.storage_state import InvalidState, OriginTracker, capture, restore
from shared.cdp import CdpError
from tests.helpers import eventually, local_page_server, page_port
from tests.chromium import Chromium

PAGE = b"<!doctype html><html><head><title>state</title></head><body>state</body></html>"
DB_SETUP = """(async () => {
  await new Promise((resolve, reject) => {
    const req = indexedDB.open("app", 3);
    req.onupgradeneeded = () => {
      const db = req.result;
      const s = db.createObjectStore("things", {keyPath: "id"});
      s.createIndex("by_kind", "kind", {unique: false});
      db.createObjectStore("loose", {autoIncrement: true});
    };
    req.onsuccess = () => {
      const db = req.result, tx = db.transaction(["things", "loose"], "readwrite");
      tx.objectStore("things").put({id: "marker", kind: "login", token: %(token)s,
        when: new Date(86400000), bytes: new Uint8Array([1, 2, 250]), map: new Map([["a", 1n]]),
        set: new Set([1, NaN]), odd: {__bf: "not a tag", neg: -0}, nothing: undefined});
      tx.objectStore("things").put({id: "blob", kind: "file", body: new Blob(["x"])});
      tx.objectStore("loose").put("first");
      tx.objectStore("loose").put([1, "two"], new Date(5));
      tx.oncomplete = () => { db.close(); resolve(); };
      tx.onerror = () => reject(tx.error);
    };
    req.onerror = () => reject(req.error);
  });
  return true;
})()"""
READ_BACK = """(async () => {
  const dbs = (await indexedDB.databases()).map(d => d.name);
  let marker = null, loose = null, index = null;
  if (dbs.includes("app")) {
    const db = await new Promise((ok, no) => { const r = indexedDB.open("app"); r.onsuccess = () => ok(r.result);
                                                 r.onerror = () => no(r.error); });
    const get = (store, key, via) => new Promise(ok => {
      const s = db.transaction(store).objectStore(store);
      const r = via ? s.index(via).get(key) : s.get(key); r.onsuccess = () => ok(r.result); });
    const m = await get("things", "marker");
    const viaIndex = await get("things", "login", "by_kind");
    const l = await get("loose", new Date(5));
    const first = await get("loose", 1);
    marker = m && {token: m.token, when: m.when instanceof Date && m.when.getTime(),
                   bytes: m.bytes instanceof Uint8Array && Array.from(m.bytes), map: m.map instanceof Map &&
                   typeof m.map.get("a") === "bigint" && String(m.map.get("a")), set: m.set instanceof Set &&
                   m.set.size === 2 && m.set.has(NaN), odd: m.odd && m.odd.__bf === "not a tag" &&
                   Object.is(m.odd.neg, -0), nothing: "nothing" in m && m.nothing === undefined,
                   version: db.version};
    index = viaIndex && viaIndex.id;
    loose = [l, first];
    db.close();
  }
  return {cookies: document.cookie, local: localStorage.getItem("marker"), marker, index, loose, dbs};
})()"""


class Tab:
    """A page of a context driven over DevTools, for the test's side of things."""

    def __init__(self, cdp: CdpConnection, session_id: str):
        self.cdp, self.session_id = cdp, session_id

    @classmethod
    async def open(cls, cdp: CdpConnection, context_id: str | None, url: str) -> "Tab":
        params = {"url": url, **({"browserContextId": context_id} if context_id else {})}
        target = (await cdp.call("Target.createTarget", params, timeout_s=10))["targetId"]
        session = (await cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                  timeout_s=10))["sessionId"]
        tab = cls(cdp, session)
        await eventually(lambda: tab.loaded(url), what=f"{url} loaded")
        return tab

    async def loaded(self, url: str) -> bool:
        with contextlib.suppress(CdpError):  # between two documents
            return await self.run(f"location.href === {url!r} && document.readyState === 'complete'")
        return False

    async def run(self, expression: str):
        answer = await self.cdp.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                          "returnByValue": True}, session_id=self.session_id,
                                     timeout_s=20)
        assert "exceptionDetails" not in answer, answer
        return answer["result"].get("value")


@pytest_asyncio.fixture
async def browser():
    launched = await Chromium.launch()
    yield launched
    await launched.kill()


@pytest_asyncio.fixture
async def other_browser():
    launched = await Chromium.launch()
    yield launched
    await launched.kill()


@pytest_asyncio.fixture
async def cdp(browser):
    connection = await CdpConnection.connect(browser.ws_url, timeout_s=10, max_message_bytes=64 * 2**20)
    yield connection
    await connection.close()


async def new_context(cdp: CdpConnection) -> str:
    return (await cdp.call("Target.createBrowserContext", {}, timeout_s=10))["browserContextId"]


def origins_of_test_pages() -> tuple[str, str]:
    """Two origins of the one loopback page server: 127.0.0.1 and localhost are different sites."""
    return f"http://127.0.0.1:{page_port()}", f"http://localhost:{page_port()}"


@contextlib.contextmanager
def two_origin_page(body: bytes = PAGE):
    with local_page_server(body) as url:
        path = url.split(str(page_port()), 1)[1]
        first, second = origins_of_test_pages()
        yield first + path, second + path


async def set_state(tab: Tab, token: str) -> None:
    await tab.run(f"document.cookie = 'kept={token}; path=/; max-age=3600'; "
                  f"document.cookie = 'session_only={token}; path=/'; localStorage.setItem('marker', {token!r})")
    assert await tab.run(DB_SETUP % {"token": repr(token)})


def sees_everything(seen: dict, token: str) -> None:
    assert f"kept={token}" in seen["cookies"] and f"session_only={token}" in seen["cookies"]
    assert seen["local"] == token
    assert seen["marker"] == {"token": token, "when": 86400000, "bytes": [1, 2, 250], "map": "1", "set": True,
                              "odd": True, "nothing": True, "version": 3}
    assert seen["index"] == "marker" and seen["loose"] == [[1, "two"], "first"]


def sees_nothing(seen: dict) -> None:
    assert seen == {"cookies": "", "local": None, "marker": None, "index": None, "loose": None, "dbs": []}


async def test_a_contexts_state_restores_into_a_fresh_context_and_into_another_browsers_default_context(
        browser, other_browser, cdp):
    token = uuid.uuid4().hex
    a, b, untouched = await new_context(cdp), await new_context(cdp), await new_context(cdp)
    with two_origin_page() as (first_url, second_url):
        first, second = origins_of_test_pages()
        await set_state(await Tab.open(cdp, a, first_url), token)
        await set_state(await Tab.open(cdp, a, second_url), token + "2")

        state = await capture(browser.ws_url, context_id=a, origins=[first, second + "/"])

        assert [o["origin"] for o in state["origins"]] == sorted([first, second])
        sessions = {c["name"]: c["session"] for c in state["cookies"] if c["domain"] == "127.0.0.1"}
        assert sessions == {"kept": False, "session_only": True}
        # The Blob record is not carried, and says so; the rest of its store is.
        assert {e["origin"] for e in state["errors"]} == {first, second}
        assert all("1 Blob" in e["error"] for e in state["errors"])

        assert await restore(browser.ws_url, context_id=b, state=state) == []
        sees_everything(await (await Tab.open(cdp, b, first_url)).run(READ_BACK), token)
        sees_everything(await (await Tab.open(cdp, b, second_url)).run(READ_BACK), token + "2")
        sees_nothing(await (await Tab.open(cdp, untouched, first_url)).run(READ_BACK))

        assert await restore(other_browser.ws_url, context_id=None, state=state) == []
        other = await CdpConnection.connect(other_browser.ws_url, timeout_s=10, max_message_bytes=2**24)
        try:
            sees_everything(await (await Tab.open(other, None, second_url)).run(READ_BACK), token + "2")
        finally:
            await other.close()


# The origin's own service worker answers every navigation in its scope with a page that runs
# the origin's script (it marks localStorage with the path it ran at).
SERVICE_WORKER = b"""
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));
self.addEventListener("fetch", (e) => e.respondWith(new Response(
  "<script>localStorage.setItem('ran at ' + location.pathname, '1')</script>",
  {headers: {"content-type": "text/html"}})));
"""
REGISTER = """navigator.serviceWorker.register("/sw.js", {scope: "/"})
  .then(() => navigator.serviceWorker.ready).then(() => true)"""


class _CountingPages(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):
        self.hits.append(self.path)
        body, kind = (SERVICE_WORKER, "text/javascript") if self.path == "/sw.js" else (PAGE, "text/html")
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


async def test_capture_and_restore_send_no_request_to_the_origin_and_run_none_of_its_pages(browser, cdp):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingPages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        a, b = await new_context(cdp), await new_context(cdp)
        await set_state(await Tab.open(cdp, a, origin + "/page"), "t0")
        before = list(_CountingPages.hits)

        state = await capture(browser.ws_url, context_id=a, origins=[origin])
        await restore(browser.ws_url, context_id=b, state=state)

        assert before == ["/page"] and _CountingPages.hits == before
        assert [o["origin"] for o in state["origins"]] == [origin]
    finally:
        server.shutdown()
        server.server_close()


async def test_the_origins_service_worker_does_not_answer_the_capturing_page(browser, cdp):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingPages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        a = await new_context(cdp)
        assert await (await Tab.open(cdp, a, origin + "/page")).run(REGISTER)
        await Tab.open(cdp, a, origin + "/tenant")  # the worker answers the tenant's own pages

        state = await capture(browser.ws_url, context_id=a, origins=[origin])

        [entry] = state["origins"]
        assert entry["localStorage"] == [{"name": "ran at /tenant", "value": "1"}]
    finally:
        server.shutdown()
        server.server_close()


async def test_the_tracker_reports_the_origins_a_contexts_pages_showed_and_no_other_contexts(browser, cdp):
    tracker = OriginTracker()
    await tracker.start(browser.ws_url)
    try:
        a, b = await new_context(cdp), await new_context(cdp)
        first, second = origins_of_test_pages()
        with two_origin_page() as (first_url, second_url):
            tab = await Tab.open(cdp, a, first_url)
            await Tab.open(cdp, b, second_url)
            await Tab.open(cdp, None, second_url)
            await eventually(lambda: tracker.origins(a) == {first} and tracker.origins(b) == {second}
                             and tracker.origins(None) == {second}, what="the origins tracked")
            await tab.run(f"location.href = {second_url!r}")
            await eventually(lambda: tracker.origins(a) == {first, second}, what="a navigation tracked")

        assert tracker.origins(b) == {second} and tracker.origins("no-such-context") == set()
        tracker.forget(a)
        assert tracker.origins(a) == set() and tracker.origins(None) == {second}
    finally:
        await tracker.close()


HOLD_TRANSACTION = """(async () => {
  const db = await new Promise(ok => { const r = indexedDB.open("held", 1);
    r.onupgradeneeded = () => r.result.createObjectStore("s"); r.onsuccess = () => ok(r.result); });
  const store = db.transaction("s", "readwrite").objectStore("s");
  const spin = () => { store.get(0).onsuccess = spin; };  // the transaction never ends
  spin();
  return true;
})()"""


async def test_a_page_that_never_lets_go_fails_its_origin_by_the_deadline_and_not_the_capture(browser, cdp):
    a = await new_context(cdp)
    first, second = origins_of_test_pages()
    with two_origin_page() as (first_url, second_url):
        await set_state(await Tab.open(cdp, a, second_url), "fine")
        assert await (await Tab.open(cdp, a, first_url)).run(HOLD_TRANSACTION)

        async with asyncio.timeout(60):  # a hang guard, not a speed assertion
            state = await capture(browser.ws_url, context_id=a, origins=[first, second], timeout_s=3)

    assert {"origin": first, "error": "timed out"} in state["errors"]
    assert [o["origin"] for o in state["origins"]] == [second]
    assert any(c["name"] == "kept" for c in state["cookies"])


async def test_oversized_state_is_refused_on_capture_and_on_restore(browser, cdp):
    a, b = await new_context(cdp), await new_context(cdp)
    first, second = origins_of_test_pages()
    with two_origin_page() as (first_url, second_url):
        await set_state(await Tab.open(cdp, a, second_url), "small")
        big = await Tab.open(cdp, a, first_url)
        await set_state(big, "big")
        await big.run("localStorage.setItem('filler', 'x'.repeat(1500000)); true")

        state = await capture(browser.ws_url, context_id=a, origins=[first, second], max_origin_bytes=2**20)

        assert {"origin": first, "error": "too large"} in state["errors"]
        assert [o["origin"] for o in state["origins"]] == [second]

        whole = await capture(browser.ws_url, context_id=a, origins=[first, second], max_origin_bytes=4 * 2**20)
        assert {o["origin"] for o in whole["origins"]} == {first, second}
        errors = await restore(browser.ws_url, context_id=b, state=whole, max_origin_bytes=2**20)
        assert errors == [{"origin": first, "error": "too large"}]
        sees_nothing({**await (await Tab.open(cdp, b, first_url)).run(READ_BACK), "cookies": ""})
        assert (await (await Tab.open(cdp, b, second_url)).run(READ_BACK))["local"] == "small"


@pytest.mark.parametrize("bad", [
    {"origins": [{"origin": "javascript:alert(1)"}]},
    {"origins": [{"origin": "http://127.0.0.1:1/path"}]},
    {"origins": [{"origin": "http://127.0.0.1:1", "localStorage": [{"name": "k", "value": 1}]}]},
    {"origins": [{"origin": "http://127.0.0.1:1", "indexedDB": [{"name": "d", "version": 0, "stores": []}]}]},
    {"origins": [{"origin": "http://127.0.0.1:1", "indexedDB": [
        {"name": "d", "version": 1, "stores": [{"name": "s", "keyPath": 5, "autoIncrement": False}]}]}]},
    {"cookies": [{"name": "a"}]},
    {"cookies": "a=1"},
    {"origins": [{"origin": f"http://127.0.0.1:{p}"} for p in range(1, storage_state.MAX_ORIGINS + 2)]},
])
async def test_a_malformed_state_is_refused_before_anything_is_written(browser, cdp, bad):
    b = await new_context(cdp)
    good = {"origin": origins_of_test_pages()[0], "localStorage": [{"name": "marker", "value": "x"}]}
    state = {"cookies": [], **bad, "origins": [good, *bad.get("origins", [])]}

    with pytest.raises(InvalidState):
        await restore(browser.ws_url, context_id=b, state=state)

    with local_page_server(PAGE) as url:
        assert (await (await Tab.open(cdp, b, url)).run(READ_BACK))["local"] is None


async def test_the_tracker_keeps_the_default_context_when_it_tracks_no_more_contexts(browser, cdp):
    tracker = OriginTracker(max_contexts=1)
    await tracker.start(browser.ws_url)
    try:
        a, b = await new_context(cdp), await new_context(cdp)
        first, second = origins_of_test_pages()
        with two_origin_page() as (first_url, second_url):
            await Tab.open(cdp, a, first_url)
            await eventually(lambda: tracker.origins(a) == {first}, what="the first context tracked")
            await Tab.open(cdp, b, first_url)
            await Tab.open(cdp, None, second_url)
            await eventually(lambda: tracker.origins(None) == {second}, what="the default context tracked")
        assert tracker.origins(b) == set()
    finally:
        await tracker.close()


TINY_RECORDS = """(async () => {
  const db = await new Promise(ok => { const r = indexedDB.open("tiny", 1);
    r.onupgradeneeded = () => r.result.createObjectStore("s"); r.onsuccess = () => ok(r.result); });
  await new Promise(ok => { const tx = db.transaction("s", "readwrite"), s = tx.objectStore("s");
    for (let i = 0; i < 40000; i++) s.put(0, i);
    tx.oncomplete = ok; });
  return true;
})()"""


async def test_many_tiny_records_weigh_what_they_cost_parsed_not_their_few_bytes_of_json(browser, cdp):
    a = await new_context(cdp)
    with local_page_server(PAGE) as url:
        assert await (await Tab.open(cdp, a, url)).run(TINY_RECORDS)
    origin = origins_of_test_pages()[0]

    refused = await capture(browser.ws_url, context_id=a, origins=[origin], max_origin_bytes=2**21)
    taken = await capture(browser.ws_url, context_id=a, origins=[origin], max_origin_bytes=2**23)

    assert refused["errors"] == [{"origin": origin, "error": "too large"}] and refused["origins"] == []
    [entry] = taken["origins"]
    assert len(entry["indexedDB"][0]["stores"][0]["records"]) == 40000
    assert len(json.dumps(entry)) < 2**21  # the JSON alone would have passed the smaller cap
