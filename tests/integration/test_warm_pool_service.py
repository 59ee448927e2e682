"""warm_pool as a real process with real Chromium, Postgres and RabbitMQ."""
import asyncio
import os
import re
import signal
import uuid
from datetime import datetime, timezone

import httpx

from shared.messages import SessionStarted, SubscriptionChanged
from tests.integration.warm_pool_process import (CDP_URL, crash_events, devtools_answers, lease, next_crash,
                                                 provision, publish, start_and_end_session, wait_until)


async def test_lease_rpc_serves_a_warm_browser_and_refills(start_pool, fresh_mq, rpc):
    wp = start_pool()
    assert (await lease(rpc, uuid.uuid4())).error == "unknown_tenant"
    tenant = await provision(fresh_mq, prewarm=2)
    await wp.wait_pool(tenant, idle=2, launching=0)

    session = uuid.uuid4()
    reply = await lease(rpc, tenant, session)
    assert reply.ok and reply.warm and CDP_URL.match(reply.cdp_ws_url)
    assert devtools_answers(reply.cdp_ws_url)
    assert await lease(rpc, tenant, session) == reply  # a retried request gets the same browser
    await wp.wait_pool(tenant, idle=2, leased=1, launching=0)

    await start_and_end_session(fresh_mq, tenant, reply.browser_id, session)
    await wp.wait_pool(tenant, idle=2, leased=0, launching=0)

    async def removed():
        return str(reply.browser_id) not in wp.profile_dirs()
    await wait_until(removed)
    assert not devtools_answers(reply.cdp_ws_url)
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{wp.url}/metrics")).text
    assert 'warm_pool_leases_total{result="warm"} 1.0' in metrics
    assert "warm_pool_launch_duration_seconds_count" in metrics


async def test_concurrent_leases_take_each_idle_browser_once(start_pool, fresh_mq, rpc):
    wp = start_pool(max_browsers=10, lease_wait_s=0)
    tenant = await provision(fresh_mq, prewarm=5)
    await wp.wait_pool(tenant, idle=5, launching=0)

    replies = await asyncio.gather(*(lease(rpc, tenant) for _ in range(20)))
    ok = [r for r in replies if r.ok]
    assert sum(r.warm for r in ok) == 5
    assert len({r.browser_id for r in ok}) == len(ok) and len({r.cdp_ws_url for r in ok}) == len(ok)
    assert 5 <= len(ok) <= 10
    assert {r.error for r in replies if not r.ok} == {"no_capacity"}
    assert len(await wp.browsers(state="leased")) == len(ok)


async def test_a_killed_leased_browser_is_reported_and_replaced(start_pool, fresh_mq, rpc):
    wp = start_pool()
    conn, crashes = await crash_events(fresh_mq)
    async with conn:
        tenant = await provision(fresh_mq, prewarm=1)
        await wp.wait_pool(tenant, idle=1, launching=0)
        session = uuid.uuid4()
        reply = await lease(rpc, tenant, session)
        [row] = await wp.browsers(id=reply.browser_id)
        os.kill(row["pid"], signal.SIGKILL)

        event = await next_crash(crashes)
        assert (event.browser_id, event.tenant_id, event.session_id) == (reply.browser_id, tenant, session)
        await wp.wait_pool(tenant, idle=1, leased=0, launching=0)

        async def removed():
            return str(reply.browser_id) not in wp.profile_dirs()
        await wait_until(removed)


async def test_a_lease_whose_session_never_starts_is_reclaimed(start_pool, fresh_mq, rpc):
    wp = start_pool(lease_confirm_timeout_s=1)
    tenant = await provision(fresh_mq, prewarm=2)
    await wp.wait_pool(tenant, idle=2, launching=0)
    abandoned, used = await lease(rpc, tenant), await lease(rpc, tenant)
    await publish(fresh_mq, SessionStarted(session_id=(await wp.browsers(id=used.browser_id))[0]["session_id"],
                                           tenant_id=tenant, browser_id=used.browser_id, warm=True,
                                           started_at=datetime.now(timezone.utc)))

    async def reclaimed():
        return [r["state"] for r in await wp.browsers(id=abandoned.browser_id)] == ["dead"]
    await wait_until(reclaimed)
    assert not devtools_answers(abandoned.cdp_ws_url)
    assert [r["state"] for r in await wp.browsers(id=used.browser_id)] == ["leased"]
    assert devtools_answers(used.cdp_ws_url)


async def test_cancel_drains_the_tenants_idle_browsers(start_pool, fresh_mq, rpc):
    wp = start_pool()
    tenant = await provision(fresh_mq, prewarm=2)
    await wp.wait_pool(tenant, idle=2, launching=0)
    await publish(fresh_mq, SubscriptionChanged(tenant_id=tenant, plan="professional", status="canceled"))
    await wp.wait_pool(tenant, idle=0, launching=0)

    async def gone():
        return not wp.profile_dirs() and not wp.chromium_pids()
    await wait_until(gone)
    assert (await lease(rpc, tenant)).error == "unknown_tenant"


async def test_lease_cycles_leave_exactly_the_idle_pool_and_sigterm_leaves_nothing(start_pool, fresh_mq, rpc):
    wp = start_pool()
    tenant = await provision(fresh_mq, prewarm=2)
    await wp.wait_pool(tenant, idle=2, launching=0)

    async def cycle():
        session = uuid.uuid4()
        reply = await lease(rpc, tenant, session)
        assert reply.ok
        await start_and_end_session(fresh_mq, tenant, reply.browser_id, session)
        return reply.browser_id

    used = set()
    for _ in range(10):
        used |= set(await asyncio.gather(*(cycle() for _ in range(5))))
    assert len(used) == 50  # never one browser twice

    # The pool may have grown with the lease rate; what runs must be exactly its idle browsers.
    await wp.wait_pool(tenant, leased=0, launching=0)

    async def only_the_idle_pool():
        idle = await wp.browsers(state="idle")
        groups = {os.getpgid(pid) for pid in wp.chromium_pids() if os.path.exists(f"/proc/{pid}")}
        return (len(idle) >= 2 and wp.profile_dirs() == {str(r["id"]) for r in idle}
                and groups == {r["pid"] for r in idle}
                and len(await wp.browsers()) == len(idle) + len(await wp.browsers(state="dead")))
    await wait_until(only_the_idle_pool)

    assert wp.service.stop(signal.SIGTERM) == 0
    assert wp.chromium_pids() == [] and wp.profile_dirs() == set()


async def test_start_up_removes_what_a_killed_predecessor_left(start_pool, fresh_mq, rpc):
    first = start_pool()
    conn, crashes = await crash_events(fresh_mq)
    async with conn:
        tenant = await provision(fresh_mq, prewarm=2)
        await first.wait_pool(tenant, idle=2, launching=0)
        session = uuid.uuid4()
        leased = await lease(rpc, tenant, session)
        await first.wait_pool(tenant, idle=2, leased=1, launching=0)
        old_dirs = first.profile_dirs()
        first.service.kill()  # SIGKILL: no clean-up ran, its browsers are still running
        assert first.chromium_pids() and devtools_answers(leased.cdp_ws_url)

        second = start_pool()
        assert second.profile_root == first.profile_root
        event = await next_crash(crashes)
        assert (event.browser_id, event.session_id) == (leased.browser_id, session)
        await second.wait_pool(tenant, idle=2, leased=0, launching=0)
        assert not devtools_answers(leased.cdp_ws_url)
        assert not (old_dirs & second.profile_dirs())
        assert all(r["state"] == "dead" for r in await second.browsers() if str(r["id"]) in old_dirs)


async def test_two_replicas_share_leases_and_each_kills_only_its_own_browsers(start_pool, fresh_mq, rpc):
    first = start_pool()
    second = start_pool()  # same database, vhost and host: competing consumers on the lease queue
    tenant = await provision(fresh_mq, prewarm=4)
    await first.wait_pool(tenant, idle=4, launching=0)

    replies = await asyncio.gather(*(lease(rpc, tenant) for _ in range(8)))
    assert all(r.ok for r in replies) and len({r.browser_id for r in replies}) == 8
    for replica in (first, second):  # both replicas answered lease requests
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{replica.url}/metrics")).text
        assert re.search(r'^warm_pool_leases_total\{result="(warm|cold)"\} [1-9]', metrics, re.M)

    for reply in replies:
        [row] = await first.browsers(id=reply.browser_id)
        await start_and_end_session(fresh_mq, tenant, reply.browser_id, row["session_id"])

    async def all_ended():
        rows = [(await first.browsers(id=r.browser_id))[0] for r in replies]
        return all(row["state"] == "dead" for row in rows) and not any(devtools_answers(r.cdp_ws_url)
                                                                       for r in replies)
    await wait_until(all_ended, timeout=30)
    await first.wait_pool(tenant, leased=0, launching=0)
    assert not {str(r.browser_id) for r in replies} & first.profile_dirs()


async def test_dead_browsers_rows_are_deleted_after_their_retention(start_pool, fresh_mq, rpc):
    wp = start_pool(dead_browser_retention_s=0, prune_interval_s=0.2)
    tenant = await provision(fresh_mq, prewarm=1)
    await wp.wait_pool(tenant, idle=1, launching=0)
    session = uuid.uuid4()
    reply = await lease(rpc, tenant, session)
    await start_and_end_session(fresh_mq, tenant, reply.browser_id, session)

    async def pruned():
        return not await wp.browsers(id=reply.browser_id)
    await wait_until(pruned)
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{wp.url}/metrics")).text
    assert re.search(r"^warm_pool_dead_browsers_pruned_total [1-9]", metrics, re.M)
    await wp.wait_pool(tenant, idle=1, leased=0, launching=0)  # the live pool is left alone
