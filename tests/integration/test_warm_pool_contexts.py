"""Context sessions from a real warm_pool process: real Chromium (sandboxed), Postgres, RabbitMQ."""
import asyncio
import math
import os
import signal
import stat
import uuid

import websockets

from shared.cdp import CdpCommands
from shared.messages import LEASE_QUEUE, LeaseReply, LeaseRequest
from tests.integration.warm_pool_process import (crash_events, next_crash, provision, start_and_end_session,
                                                 wait_until)

PER_BROWSER = 4


async def lease(rpc, tenant_id, session_id=None) -> LeaseReply:
    req = LeaseRequest(tenant_id=tenant_id, session_id=session_id or uuid.uuid4(), isolation="context")
    return LeaseReply.model_validate_json(await rpc.call(LEASE_QUEUE, req.model_dump_json().encode(), timeout=30))


async def browser_view(cdp_ws_url: str) -> tuple[set[str], dict[str, list[dict]]]:
    """The browser's contexts, and its page targets by context, over a raw CDP connection."""
    async with websockets.connect(cdp_ws_url, max_size=None) as ws:
        cdp = CdpCommands(ws, timeout_s=10)
        contexts = set((await cdp.call("Target.getBrowserContexts"))["browserContextIds"])
        pages: dict[str, list[dict]] = {}
        for t in (await cdp.call("Target.getTargets"))["targetInfos"]:
            if t["type"] == "page":
                pages.setdefault(t.get("browserContextId"), []).append(t)
    return contexts, pages


def downloads_dir(wp, reply: LeaseReply, session_id) -> str:
    return str(wp.profile_root / str(reply.browser_id) / "home" / "downloads" / str(session_id))


async def test_a_context_lease_is_a_fresh_context_with_its_first_page_and_its_own_downloads(start_pool, fresh_mq,
                                                                                          rpc):
    wp = start_pool(contexts_per_browser=PER_BROWSER, context_first_page=True)
    tenant = await provision(fresh_mq, prewarm=1)
    await wp.wait_pool(tenant, idle=1, launching=0)
    session = uuid.uuid4()

    reply = await lease(rpc, tenant, session)

    assert reply.ok and reply.context_id and reply.downloads_path == f"/browser/downloads/{session}"
    assert reply.confirm_within_s == 30  # LEASE_CONFIRM_TIMEOUT_S: how long its holder has to confirm it
    assert await lease(rpc, tenant, session) == reply  # a retried request: the same context
    contexts, pages = await browser_view(reply.cdp_ws_url)
    assert reply.context_id in contexts
    assert [p["url"] for p in pages[reply.context_id]] == ["about:blank"]
    home = wp.profile_root / str(reply.browser_id) / "home"
    made = os.stat(downloads_dir(wp, reply, session), follow_symlinks=False)
    assert stat.S_ISDIR(made.st_mode) and stat.S_IMODE(made.st_mode) == 0o700
    assert made.st_uid == os.stat(home).st_uid != 0  # the browser's own uid
    [host] = await wp.browsers(id=reply.browser_id)
    assert (host["mode"], host["state"], host["tenant_id"], host["active_contexts"]) == ("context", "hosting",
                                                                                         tenant, 1)

    other = await lease(rpc, tenant)
    assert other.ok and other.warm and other.browser_id == reply.browser_id and other.context_id != reply.context_id


async def test_eight_context_sessions_of_a_tenant_share_few_browsers_and_end_without_them(start_pool, fresh_mq, rpc):
    wp = start_pool(contexts_per_browser=PER_BROWSER)
    tenant = await provision(fresh_mq, prewarm=0)
    await wp.wait_pool(tenant, idle=0, launching=0)
    sessions = [uuid.uuid4() for _ in range(8)]

    replies = await asyncio.gather(*(lease(rpc, tenant, s) for s in sessions))

    assert all(r.ok for r in replies) and len({r.context_id for r in replies}) == 8
    for reply in replies:
        contexts, _ = await browser_view(reply.cdp_ws_url)
        assert reply.context_id in contexts

    async def live_browsers():
        return [r for r in await wp.browsers() if r["state"] != "dead"]

    # The pool may add a warm spare host; what runs is exactly the live rows, one process group each.
    async def settled():
        live = await live_browsers()
        return not any(r["state"] == "launching" for r in live) and len(live) <= math.ceil(8 / PER_BROWSER) + 1
    await wait_until(settled)
    live = await live_browsers()
    groups = {os.getpgid(pid) for pid in wp.chromium_pids() if os.path.exists(f"/proc/{pid}")}
    assert len(groups) == len(live) and all(r["tenant_id"] == tenant for r in live)

    ended, kept = replies[0], replies[1:]
    await start_and_end_session(fresh_mq, tenant, ended.browser_id, sessions[0])

    async def disposed():
        contexts, _ = await browser_view(ended.cdp_ws_url)
        return ended.context_id not in contexts
    await wait_until(disposed)
    assert not os.path.exists(downloads_dir(wp, ended, sessions[0]))
    [host] = await wp.browsers(id=ended.browser_id)
    assert host["state"] == "hosting"  # the browser goes on serving the tenant
    for reply in kept:
        contexts, _ = await browser_view(reply.cdp_ws_url)
        assert reply.context_id in contexts
    again = await lease(rpc, tenant)
    assert again.ok and again.warm


async def test_a_killed_shared_browser_ends_exactly_the_sessions_it_hosted(start_pool, fresh_mq, rpc):
    wp = start_pool(contexts_per_browser=PER_BROWSER)
    conn, crashes = await crash_events(fresh_mq)
    async with conn:
        tenant = await provision(fresh_mq, prewarm=1)
        await wp.wait_pool(tenant, idle=1, launching=0)
        sessions = [uuid.uuid4() for _ in range(3)]
        replies = [await lease(rpc, tenant, s) for s in sessions]
        host = replies[0].browser_id
        assert all(r.ok and r.browser_id == host for r in replies)
        [row] = await wp.browsers(id=host)

        os.kill(row["pid"], signal.SIGKILL)

        events = [await next_crash(crashes) for _ in sessions]
        assert sorted(e.session_id for e in events) == sorted(sessions)
        assert {(e.browser_id, e.tenant_id) for e in events} == {(host, tenant)}
        assert await crashes.get(fail=False) is None  # one per hosted session, no more

        async def removed():
            return str(host) not in wp.profile_dirs()
        await wait_until(removed)
        reply = await lease(rpc, tenant)
        assert reply.ok and reply.browser_id != host
