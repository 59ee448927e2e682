"""Issue 15, item 3: one tenant cannot take the CDP relay down for everyone.

Attacks replayed against the sessions service as a process, with real Chromium behind it: a
200 MiB CDP answer, an oversized client message (whole and fragmented), a fragmented flood from a
browser, a fifth parallel relay of one session, and a screenshot of a browser that never answers.
"""
import asyncio
import contextlib
import json
import signal
from pathlib import Path
from uuid import uuid4

import aio_pika
import pytest
import pytest_asyncio
import websockets

from shared.cdp import CdpCommands
from shared.messages import LeaseReply
from tests.helpers import eventually
from tests.integration.sessions_support import LeaseResponder, Platform, bind_event_sink, start_sessions

MiB = 2**20
CAP = 64 * MiB  # MAX_CDP_MESSAGE_BYTES's default: the service below runs with it
# Far below the 200 MiB of each attack (the unfixed relay grew by about 400 MiB for one). A
# message in one frame is refused from its header; the fragments of a fragmented one are held
# until they add up to more than the cap.
PEAK_GROWTH_BOUND = 48 * MiB
FRAGMENTED_PEAK_GROWTH_BOUND = CAP + 48 * MiB
ATTACK = 200 * MiB


class Browsers(LeaseResponder):
    """Real Chromium per lease, or a stand-in browser: `mute` accepts CDP and never answers,
    `flood` answers any command with one message of 200 MiB in 8 MiB fragments."""

    async def start(self) -> None:
        await super().start()
        self.fakes = {"mute": await websockets.serve(self._mute, "127.0.0.1", 0),
                      "flood": await websockets.serve(self._flood, "127.0.0.1", 0, max_size=None)}

    @staticmethod
    async def _mute(ws) -> None:
        async for _ in ws:
            pass

    @staticmethod
    async def _flood(ws) -> None:
        async for _ in ws:
            await ws.send(("x" * (8 * MiB) for _ in range(ATTACK // (8 * MiB))))

    async def _on_request(self, message) -> None:
        if self.mode not in self.fakes:
            return await super()._on_request(message)
        async with message.process():
            port = next(iter(self.fakes[self.mode].sockets)).getsockname()[1]
            reply = LeaseReply(ok=True, browser_id=uuid4(), cdp_ws_url=f"ws://127.0.0.1:{port}/devtools/browser/x",
                               warm=True)
            await self.channel.default_exchange.publish(
                aio_pika.Message(reply.model_dump_json().encode(), correlation_id=message.correlation_id),
                routing_key=message.reply_to)

    async def stop(self) -> None:
        for server in self.fakes.values():
            server.close()
        await super().stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def relay_platform(module_db, module_mq, artifacts_dir):
    browsers = Browsers(module_mq)
    await browsers.start()
    await bind_event_sink(module_mq)
    services = [start_sessions(module_db, module_mq, artifacts_dir, name=f"sessions-relay-limits-{i}",
                               cdp_call_timeout_s=2) for i in (1, 2)]  # two replicas of one database
    platform = Platform(module_mq, services, browsers)
    platform.pid = services[0].proc.pid
    try:
        yield platform
    finally:
        await platform.http.aclose()
        for service in services:
            service.stop(signal.SIGTERM)
        await browsers.stop()


async def _session(platform, auth) -> dict:
    r = await platform.http.post("/v1/sessions", json={"keep_alive": True}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()


async def _page(ws) -> tuple[CdpCommands, str]:
    """CDP commands over this relay and the flat session id of a fresh page."""
    cdp = CdpCommands(ws)
    target = (await cdp.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
    return cdp, (await cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]


def _status(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in lines)
            if k in ("VmRSS", "VmHWM")}


def _reset_peak(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS, and return that."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid)["VmRSS"]


async def _works(cdp_url: str) -> bool:
    async with websockets.connect(cdp_url) as ws:
        return "Chrome" in (await CdpCommands(ws).call("Browser.getVersion"))["product"]


async def test_a_200_mib_answer_closes_that_relay_only(relay_platform):
    p = relay_platform
    _, attacker_auth = await p.tenant()
    _, bystander_auth = await p.tenant()
    attacker, bystander = await _session(p, attacker_auth), await _session(p, bystander_auth)
    async with websockets.connect(attacker["cdp_url"], max_size=None) as evil, \
            websockets.connect(bystander["cdp_url"]) as other:
        _, evil_page = await _page(evil)
        other_cdp, other_page = await _page(other)
        answered, stop = [], asyncio.Event()

        async def keep_working():  # the other tenant's relay, all through the attack
            while not stop.is_set():
                answer = await other_cdp.call("Runtime.evaluate", {"expression": "6 * 7"}, other_page)
                answered.append(answer["result"]["value"])

        working = asyncio.create_task(keep_working())
        before = _reset_peak(p.pid)
        await evil.send(json.dumps({"id": 99, "method": "Runtime.evaluate", "sessionId": evil_page, "params": {
            "expression": "'x'.repeat(200 * 2 ** 20)", "returnByValue": True}}))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            while True:
                answer = json.loads(await asyncio.wait_for(evil.recv(), 120))
                assert answer.get("id") != 99, "the 200 MiB answer was relayed whole"
        peak = _status(p.pid)["VmHWM"]
        stop.set()
        await working
        assert closed.value.rcvd.code == 1009
        assert "larger than" in closed.value.rcvd.reason
        assert peak - before < PEAK_GROWTH_BOUND, f"the sessions process grew by {(peak - before) // MiB} MiB"
        assert answered and set(answered) == {42}
        assert (await other_cdp.call("Runtime.evaluate", {"expression": "1 + 1"}, other_page))["result"]["value"] == 2

    # The session goes on: the same URL connects again.
    assert (await p.http.get(f"/v1/sessions/{attacker['id']}", headers=attacker_auth)).json()["status"] == "running"
    assert await eventually(lambda: _works(attacker["cdp_url"]), what="attacker reconnects")
    for session, auth in ((attacker, attacker_auth), (bystander, bystander_auth)):
        await p.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)


async def test_a_fragmented_flood_from_the_browser_closes_the_relay(relay_platform):
    p = relay_platform
    _, auth = await p.tenant()
    p.lease.mode = "flood"
    try:
        session = await _session(p, auth)
    finally:
        p.lease.mode = "chromium"
    async with websockets.connect(session["cdp_url"], max_size=None) as ws:
        before = _reset_peak(p.pid)
        await ws.send('{"id": 1, "method": "Browser.getVersion"}')
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), 60)
        assert closed.value.rcvd.code == 1009
        assert _status(p.pid)["VmHWM"] - before < FRAGMENTED_PEAK_GROWTH_BOUND
    await p.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)


@pytest.mark.parametrize("shape", ["whole", "fragmented"])
async def test_a_client_message_over_the_cap_closes_the_relay(relay_platform, shape):
    p = relay_platform
    _, auth = await p.tenant()
    session = await _session(p, auth)
    # Not `async with`: closing again a connection the server has closed mid-write trips
    # asyncio (3.11) in the test's own client.
    ws = await websockets.connect(session["cdp_url"], max_size=None)  # offers permessage-deflate too
    before = _reset_peak(p.pid)
    message = "x" * ATTACK if shape == "whole" else ("x" * (8 * MiB) for _ in range(ATTACK // (8 * MiB)))
    with contextlib.suppress(websockets.ConnectionClosed):  # the server may close mid-write
        await ws.send(message)
    with pytest.raises(websockets.ConnectionClosedError) as closed:
        await asyncio.wait_for(ws.recv(), 60)
    await asyncio.wait_for(ws.wait_closed(), 30)
    assert closed.value.rcvd.code == 1009 and "exceeds limit" in closed.value.rcvd.reason
    bound = PEAK_GROWTH_BOUND if shape == "whole" else FRAGMENTED_PEAK_GROWTH_BOUND
    assert _status(p.pid)["VmHWM"] - before < bound
    assert (await p.http.get(f"/v1/sessions/{session['id']}", headers=auth)).json()["status"] == "running"
    assert await eventually(lambda: _works(session["cdp_url"]), what="reconnect after 1009")
    await p.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)


async def test_a_message_under_the_cap_is_relayed(relay_platform):
    """20 MiB: above the server library's default limit (16 MiB), below MAX_CDP_MESSAGE_BYTES."""
    p = relay_platform
    _, auth = await p.tenant()
    session = await _session(p, auth)
    async with websockets.connect(session["cdp_url"], max_size=None) as ws:
        cdp, page = await _page(ws)
        literal = "'" + "x" * (20 * MiB) + "'.length"
        answer = await cdp.call("Runtime.evaluate", {"expression": literal}, page)
        assert answer["result"]["value"] == 20 * MiB
    await p.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)


async def test_the_fifth_parallel_relay_of_a_session_is_refused(relay_platform):
    p = relay_platform
    _, auth = await p.tenant()
    session = await _session(p, auth)
    async with contextlib.AsyncExitStack() as stack:
        relays = [await stack.enter_async_context(websockets.connect(session["cdp_url"])) for _ in range(4)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(session["cdp_url"]):
                pass
        response = refused.value.response
        assert response.status_code == 429
        assert json.loads(response.body)["error"]["code"] == "too_many_relays"
        for ws in relays:  # the four are unaffected
            assert "Chrome" in (await CdpCommands(ws).call("Browser.getVersion"))["product"]
        await relays.pop().close()

        async def fifth_connects():
            try:
                return await _works(session["cdp_url"])
            except websockets.InvalidStatus:
                return False
        assert await eventually(fifth_connects, what="a relay slot freed by a close")
    await p.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)


async def test_the_relay_cap_holds_across_replicas(relay_platform):
    p = relay_platform
    _, auth = await p.tenant()
    session = await _session(p, auth)
    first = session["cdp_url"]
    second = first.replace(p.services[0].url.split("//")[1], p.services[1].url.split("//")[1])
    async with contextlib.AsyncExitStack() as stack:
        for url in (first, second, first, second):
            await stack.enter_async_context(websockets.connect(url))
        for url in (first, second):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(url):
                    pass
            assert refused.value.response.status_code == 429
    await p.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)


async def test_a_screenshot_of_a_browser_that_never_answers_is_a_504(relay_platform):
    p = relay_platform
    _, auth = await p.tenant()
    p.lease.mode = "mute"
    try:
        session = await _session(p, auth)
    finally:
        p.lease.mode = "chromium"
    r = await p.http.get(f"/v1/sessions/{session['id']}/screenshot", headers=auth, timeout=60)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "browser_timeout"
    await p.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)
