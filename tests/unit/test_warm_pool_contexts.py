"""Context sessions in warm_pool against fakes of its ports: where a context lease lands, when a
context host is launched or recycled, what a session's end and a host's crash do."""
import asyncio
import math
import os
import stat
import uuid

import pytest

from services.warm_pool import handlers
from services.warm_pool.adapters.contexts import make_downloads_dir, remove_downloads_dir
from services.warm_pool.pool_cluster import ClusterPool
from services.warm_pool.pool_local import LocalPool
from services.warm_pool.pools import Replica
from shared.messages import BrowserCrashed, LeaseReleased, LeaseRequest, SessionStarted, SubscriptionChanged
from tests.fakes.warm_pool import FakeClusterBackend, FakeProcessBackend, FakeUnitOfWork
from tests.unit.warm_pool_support import HOST, completed, metric, provision, settings, settle


@pytest.fixture
def uow():
    return FakeUnitOfWork()


@pytest.fixture
def backend():
    return FakeProcessBackend()


def local_pool(uow, backend, replica="replica-a", **kw) -> LocalPool:
    return LocalPool(backend, uow, settings(replica_id=replica, **{"contexts_per_browser": 4, **kw}),
                     Replica(replica, host=HOST, pid=1))


@pytest.fixture
def pool(uow, backend):
    return local_pool(uow, backend)


async def lease(pool, uow, tenant_id, session_id=None, *, settled=True):
    req = LeaseRequest(tenant_id=tenant_id, session_id=session_id or uuid.uuid4(), isolation="context")
    reply = await handlers.lease(req, pool=pool, uow=uow)
    if settled:
        await settle(pool)
    return reply


async def end(pool, uow, tenant_id, reply, session_id) -> None:
    await handlers.session_completed(completed(tenant_id, session_id, reply.browser_id), pool=pool, uow=uow)
    await settle(pool)


def hosts(uow, **where) -> list[dict]:
    return [b for b in uow.rows(mode="context", **where) if b["state"] != "dead"]


async def test_a_context_lease_opens_a_fresh_context_in_a_host_of_the_tenant(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=2)
    assert hosts(uow) == []  # a tenant that never used contexts keeps no host warm
    cold_before = metric("warm_pool_context_leases_total", result="cold")
    warm_before = metric("warm_pool_context_leases_total", result="warm")
    session = uuid.uuid4()

    first = await lease(pool, uow, tenant, session)

    assert first.ok and not first.warm and first.context_id
    (host,) = [h for h in hosts(uow) if h["id"] == first.browser_id]
    assert host["state"] == "hosting" and host["tenant_id"] == tenant and first.cdp_ws_url == host["cdp_ws_url"]
    assert backend.contexts[host["id"]] == {first.context_id: session}
    assert first.downloads_path == f"/browser/downloads/{session}" and backend.first_pages == []  # by default
    assert metric("warm_pool_context_leases_total", result="cold") == cold_before + 1

    second = await lease(pool, uow, tenant)

    assert second.ok and second.warm and second.browser_id == first.browser_id
    assert second.context_id != first.context_id
    assert metric("warm_pool_context_leases_total", result="warm") == warm_before + 1
    assert len(uow.rows(tenant_id=tenant, state="idle")) == 2  # browser mode's pre-warm count as before


async def test_concurrent_leases_fill_hosts_to_their_capacity_and_never_beyond(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=0)

    replies = await asyncio.gather(*(lease(pool, uow, tenant, settled=False) for _ in range(10)))
    await settle(pool)

    assert all(r.ok for r in replies) and len({r.context_id for r in replies}) == 10
    used = {r.browser_id for r in replies}
    assert len(used) == math.ceil(10 / 4)
    assert all(len(backend.contexts[b]) <= 4 for b in used)
    assert all(h["active_contexts"] == len(backend.contexts.get(h["id"], {})) for h in hosts(uow))


async def test_full_hosts_make_a_lease_launch_one_and_the_pool_keeps_spare_room(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    for _ in range(8):
        assert (await lease(pool, uow, tenant)).ok

    busy = [h for h in hosts(uow) if h["active_contexts"]]
    assert sorted(h["active_contexts"] for h in busy) == [4, 4]
    # Room for the next lease is warm: one more host at most, with every slot free.
    assert len(hosts(uow)) <= math.ceil(8 / 4) + 1
    assert (await lease(pool, uow, tenant)).warm


async def test_a_lease_ahead_takes_an_open_hosts_room_or_nothing_and_never_launches(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=0)
    ahead = LeaseRequest(tenant_id=tenant, session_id=uuid.uuid4(), isolation="context", ahead=True)
    refused = await handlers.lease(ahead, pool=pool, uow=uow)
    assert not refused.ok and refused.error == "no_capacity"
    assert hosts(uow) == [] and backend.launches == []  # no host of its own, none started for it

    first = await lease(pool, uow, tenant)  # a create launches the tenant's first host
    taken = await handlers.lease(ahead.model_copy(update={"session_id": uuid.uuid4()}), pool=pool, uow=uow)
    assert taken.ok and taken.warm and taken.browser_id == first.browser_id and taken.context_id


async def test_two_tenants_never_share_a_host(pool, uow, backend):
    a, b = await provision(pool, uow, prewarm=1), await provision(pool, uow, prewarm=1)

    replies = {t: [await lease(pool, uow, t) for _ in range(3)] for t in (a, b)}

    for tenant, theirs in replies.items():
        for reply in theirs:
            (host,) = uow.rows(id=reply.browser_id)
            assert host["tenant_id"] == tenant
    assert not {r.browser_id for r in replies[a]} & {r.browser_id for r in replies[b]}


async def test_a_retried_request_gets_the_same_context(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    session = uuid.uuid4()
    first = await lease(pool, uow, tenant, session)
    assert await lease(pool, uow, tenant, session) == first

    twice = uuid.uuid4()
    one, other = await asyncio.gather(lease(pool, uow, tenant, twice), lease(pool, uow, tenant, twice))

    assert one.ok and one == other
    assert len(uow.context_rows(session_id=twice)) == 1
    assert sum(s == twice for ctxs in backend.contexts.values() for s in ctxs.values()) == 1


async def test_session_end_disposes_its_context_and_keeps_the_host_serving(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    session, kept = uuid.uuid4(), uuid.uuid4()
    reply = await lease(pool, uow, tenant, session)
    other = await lease(pool, uow, tenant, kept)
    await handlers.session_started(SessionStarted(session_id=session, tenant_id=tenant, browser_id=reply.browser_id,
                                                  warm=reply.warm, started_at=completed(tenant, session, None).ended_at),
                                   uow=uow)
    assert uow.contexts[session]["confirmed_at"] is not None

    event = completed(tenant, session, reply.browser_id)  # sessions names the host as the browser
    await handlers.session_completed(event, pool=pool, uow=uow)
    await handlers.session_completed(event, pool=pool, uow=uow)
    await settle(pool)

    (host,) = uow.rows(id=reply.browser_id)
    assert host["state"] == "hosting" and host["active_contexts"] == 1 and reply.browser_id not in backend.killed
    assert backend.contexts[reply.browser_id] == {other.context_id: kept}
    assert uow.contexts[session]["state"] == "ended"
    again = await lease(pool, uow, tenant)
    assert again.warm and again.browser_id == reply.browser_id


async def test_a_session_ended_on_another_replica_is_disposed_by_the_hosts_own(uow, backend):
    mine = local_pool(uow, backend, replica="replica-b")
    tenant = await provision(mine, uow, prewarm=1)
    session = uuid.uuid4()
    reply = await lease(mine, uow, tenant, session)
    elsewhere = local_pool(uow, backend, replica="replica-a")

    await handlers.session_completed(completed(tenant, session, reply.browser_id), pool=elsewhere, uow=uow)

    assert uow.contexts[session]["state"] == "ending" and reply.context_id in backend.contexts[reply.browser_id]
    await handlers.reconcile(pool=mine, uow=uow, confirm_timeout_s=30)
    await settle(mine)
    assert uow.contexts[session]["state"] == "ended" and backend.contexts[reply.browser_id] == {}
    assert uow.rows(id=reply.browser_id)[0]["state"] == "hosting"


async def test_an_unconfirmed_context_is_reclaimed(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    reply = await lease(pool, uow, tenant)
    uow.clock += 31

    await handlers.reconcile(pool=pool, uow=uow, confirm_timeout_s=30)

    assert backend.contexts[reply.browser_id] == {} and uow.rows(id=reply.browser_id)[0]["active_contexts"] == 0


async def test_a_released_reservation_is_disposed_only_if_unconfirmed_and_the_tenants(pool, uow, backend):
    tenant, other = await provision(pool, uow, prewarm=1), uuid.uuid4()
    unused, started = uuid.uuid4(), uuid.uuid4()
    reply = await lease(pool, uow, tenant, unused)
    kept = await lease(pool, uow, tenant, started)
    await handlers.session_started(SessionStarted(session_id=started, tenant_id=tenant, browser_id=kept.browser_id,
                                                  warm=True, started_at=completed(tenant, started, None).ended_at),
                                   uow=uow)

    for session_id, tenant_id in ((unused, other), (started, tenant), (unused, tenant)):
        await handlers.lease_released(LeaseReleased(session_id=session_id, tenant_id=tenant_id,
                                                    browser_id=reply.browser_id), pool=pool, uow=uow)
    await settle(pool)

    assert backend.contexts[reply.browser_id] == {kept.context_id: started}  # another tenant's word, or a
    assert uow.contexts[unused]["state"] == "ended"                          # session's, disposes nothing


@pytest.mark.parametrize("threshold", ["served", "age", "memory"])
async def test_a_host_due_for_recycling_takes_no_new_context_and_goes_only_once_empty(uow, backend, threshold):
    pool = local_pool(uow, backend, context_recycle_after=2 if threshold == "served" else 100,
                      context_host_max_age_s=50, context_recycle_memory_growth_mib=100)
    tenant = await provision(pool, uow, prewarm=1)
    s1, s2 = uuid.uuid4(), uuid.uuid4()
    first = await lease(pool, uow, tenant, s1)
    host = first.browser_id
    if threshold != "served":
        await lease(pool, uow, tenant, s2)
    else:
        assert (await lease(pool, uow, tenant, s2)).browser_id == host
    if threshold == "age":
        uow.clock += 51
    if threshold == "memory":
        backend.memory[host] = 80 * 2**20
        await handlers.reconcile(pool=pool, uow=uow, confirm_timeout_s=3600)  # what it started with
        backend.memory[host] += 101 * 2**20
        await handlers.reconcile(pool=pool, uow=uow, confirm_timeout_s=3600)
    recycled = metric("warm_pool_context_hosts_recycled_total")

    later = await lease(pool, uow, tenant)
    await handlers.reconcile(pool=pool, uow=uow, confirm_timeout_s=3600)

    assert later.ok and later.browser_id != host
    assert host not in backend.killed  # still serving s1 and s2
    await end(pool, uow, tenant, first, s1)
    assert host not in backend.killed
    await end(pool, uow, tenant, first, s2)
    assert host in backend.killed and uow.rows(id=host)[0]["state"] == "dead"
    assert metric("warm_pool_context_hosts_recycled_total") >= recycled + 1


async def test_a_host_crash_reports_exactly_the_sessions_it_hosted(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    sessions = [uuid.uuid4() for _ in range(4)]
    replies = [await lease(pool, uow, tenant, s) for s in sessions]
    host = replies[0].browser_id
    assert all(r.browser_id == host for r in replies)
    await end(pool, uow, tenant, replies[0], sessions[0])  # over before the crash: not reported
    elsewhere = await provision(pool, uow, prewarm=1)
    unaffected = await lease(pool, uow, elsewhere)
    uow.outbox.clear()

    backend.crash(host)
    await handlers.check_crashes(pool=pool, uow=uow)
    await settle(pool)

    assert all(isinstance(e, BrowserCrashed) and e.browser_id == host and e.tenant_id == tenant for e in uow.outbox)
    assert sorted(e.session_id for e in uow.outbox) == sorted(sessions[1:])
    assert uow.rows(id=host)[0]["state"] == "dead"
    assert {uow.contexts[s]["state"] for s in sessions[1:]} == {"crashed"}
    assert backend.contexts[unaffected.browser_id] and uow.rows(id=unaffected.browser_id)[0]["state"] == "hosting"
    # The crashed sessions' ends change nothing more; the tenant's next lease gets a new host.
    await end(pool, uow, tenant, replies[1], sessions[1])
    assert len(uow.outbox) == 3
    assert (await lease(pool, uow, tenant)).browser_id != host


async def test_shut_down_reports_each_hosted_session(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    sessions = [uuid.uuid4() for _ in range(3)]
    for s in sessions:
        await lease(pool, uow, tenant, s)

    await handlers.shut_down(pool=pool)

    assert sorted(e.session_id for e in uow.outbox) == sorted(sessions)


async def test_a_failed_context_answers_error_and_its_host_takes_no_more(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    first = await lease(pool, uow, tenant)
    backend.fail_contexts = True

    reply = await lease(pool, uow, tenant)

    assert not reply.ok and reply.error == "error"
    (host,) = uow.rows(id=first.browser_id)
    assert host["recycle"] and host["active_contexts"] == 1
    backend.fail_contexts = False
    assert (await lease(pool, uow, tenant)).browser_id != first.browser_id


async def test_a_cancel_retires_empty_hosts_at_once_and_serving_ones_after_their_last_context(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    session = uuid.uuid4()
    reply = await lease(pool, uow, tenant, session)
    empty = [h["id"] for h in hosts(uow) if h["active_contexts"] == 0]

    await handlers.subscription_changed(SubscriptionChanged(tenant_id=tenant, plan="professional", status="canceled"),
                                        pool=pool, uow=uow, plans_file=pool.settings.plans_file)
    await handlers.reconcile(pool=pool, uow=uow, confirm_timeout_s=3600)

    assert all(uow.rows(id=b)[0]["state"] == "dead" for b in empty)
    assert uow.rows(id=reply.browser_id)[0]["state"] == "hosting"
    assert (await lease(pool, uow, tenant)).error == "unknown_tenant"
    await end(pool, uow, tenant, reply, session)
    assert uow.rows(id=reply.browser_id)[0]["state"] == "dead"


async def test_at_the_host_cap_a_context_lease_answers_no_capacity(uow, backend):
    pool = local_pool(uow, backend, max_browsers=1, contexts_per_browser=1)
    tenant = await provision(pool, uow, prewarm=0)
    assert (await lease(pool, uow, tenant)).ok

    reply = await lease(pool, uow, tenant)

    assert not reply.ok and reply.error == "no_capacity"


async def test_gauges_count_this_replicas_hosts_and_contexts(pool, uow, backend):
    tenant = await provision(pool, uow, prewarm=1)
    for _ in range(5):
        await lease(pool, uow, tenant)

    await handlers.reconcile(pool=pool, uow=uow, confirm_timeout_s=3600)

    assert metric("warm_pool_active_contexts") == 5
    assert metric("warm_pool_context_hosts") == len([h for h in hosts(uow) if h["state"] == "hosting"])
    view = await handlers.pool_view(uow=uow)
    assert [(r["context_hosts"], r["active_contexts"]) for r in view] == [(metric("warm_pool_context_hosts"), 5)]


async def test_the_cluster_pool_refuses_context_leases_clearly(uow):
    pool = ClusterPool(FakeClusterBackend(), uow, settings(), Replica("replica-a", host=HOST, pid=1))
    tenant = await provision(pool, uow, prewarm=0)

    reply = await lease(pool, uow, tenant, settled=False)

    assert not reply.ok and reply.error == "error" and "kubernetes" in reply.message


# --- a context's downloads directory, against a tenant's planted links ---------------------------

def _home(tmp_path, uid=4242):
    home = tmp_path / "browser" / "home"
    (home / "downloads").mkdir(parents=True)
    os.chown(home, uid, uid)
    os.chown(home / "downloads", uid, uid)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("the host's")
    return home, outside


def test_a_downloads_directory_is_the_browsers_own_and_goes_with_what_is_in_it(tmp_path):
    home, _ = _home(tmp_path)
    make_downloads_dir(home, "s1")
    made = os.stat(home / "downloads" / "s1")
    assert (made.st_uid, stat.S_IMODE(made.st_mode)) == (4242, 0o700)
    (home / "downloads" / "s1" / "deep").mkdir()
    (home / "downloads" / "s1" / "deep" / "file.pdf").write_bytes(b"%PDF")

    remove_downloads_dir(home, "s1")

    assert not (home / "downloads" / "s1").exists() and (home / "downloads").is_dir()


def test_a_planted_downloads_link_leads_neither_the_making_nor_the_removal_outside(tmp_path):
    home, outside = _home(tmp_path)
    (home / "downloads").rmdir()
    (home / "downloads").symlink_to(outside)  # the browser replaced its downloads directory
    (outside / "s1").mkdir()
    (outside / "s1" / "keep").write_text("the host's")

    with pytest.raises(OSError):
        make_downloads_dir(home, "s2")
    remove_downloads_dir(home, "s1")

    assert not (outside / "s2").exists() and (outside / "s1" / "keep").read_text() == "the host's"


def test_links_planted_inside_a_downloads_directory_are_removed_not_followed(tmp_path):
    home, outside = _home(tmp_path)
    make_downloads_dir(home, "s1")
    (home / "downloads" / "s1" / "escape").symlink_to(outside)
    (home / "downloads" / "s2").symlink_to(outside)  # a link in the place of another session's directory

    remove_downloads_dir(home, "s1")
    remove_downloads_dir(home, "s2")

    assert (outside / "keep").read_text() == "the host's"
    assert not os.path.lexists(home / "downloads" / "s1") and not os.path.lexists(home / "downloads" / "s2")


async def test_start_up_after_a_dead_predecessor_reports_each_session_its_hosts_held(uow, backend):
    before = local_pool(uow, backend)
    tenant = await provision(before, uow, prewarm=1)
    sessions = [uuid.uuid4() for _ in range(2)]
    for s in sessions:
        assert (await lease(before, uow, tenant, s)).ok
    successor = local_pool(uow, backend, replica="replica-a2")

    await handlers.start_up(pool=successor)

    assert all(r["state"] == "dead" for r in uow.rows(mode="context"))
    assert sorted(e.session_id for e in uow.outbox) == sorted(sessions)
