"""sessions' handlers against fakes of their ports (tests/fakes/sessions.py): the create saga and its
refunds, idempotent replays, admission, the tenant projection and its out-of-order and duplicate
messages, crashes, cancellations, the reaper and API keys — with no database, broker or browser."""
import ast
import json
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from services.sessions import api_keys, ending, handlers, http, views
from services.sessions.create import CreateSession, ProfileOption, create_session
from services.sessions.domain import NotFound, Refused
from services.sessions.repository import Repository
from shared.messages import (BrowserCrashed, LeaseReply, PaymentVerified, ProfileSaved, SessionCompleted,
                             SessionStarted, SubscriptionChanged)
from tests.fakes.sessions import FakeLease, FakeRepository, FakeUnitOfWork
from tests.unit.sessions_support import LIMITS, P1, P2, tenant
from tests.fakes.uow import assert_same_methods

SERVICE = Path(__file__).resolve().parents[2] / "services" / "sessions"
OK = LeaseReply(ok=True, browser_id=uuid.uuid4(), cdp_ws_url="ws://browser/devtools/browser/x", warm=True)


@pytest.fixture
def uow():
    return FakeUnitOfWork()


@pytest.fixture
def plans(tmp_path):
    """Two plans with different minute prices, to tell which one priced a session."""
    plan = {"credits": 3, "max_concurrent_sessions": 2, "max_session_seconds": 3600, "prewarm_browsers": 0,
            "session_price": "0.01", "included_minutes": 0}
    path = tmp_path / "plans.json"
    path.write_text(json.dumps({"cheap": {**plan, "minute_price": "0.001", "stripe_price_id": "price_cheap"},
                                "dear": {**plan, "minute_price": "1.000", "stripe_price_id": "price_dear"}}))
    return path


class Ends:
    """The `ended` port: which sessions' relays were told to close, and why."""

    def __init__(self):
        self.calls = []

    def __call__(self, session_id, reason):
        self.calls.append((session_id, reason))


async def create(uow, tenant_id, lease=None, request=None, key=None) -> dict:
    return await create_session(request or CreateSession(), uow=uow, lease=lease or FakeLease(OK),
                                tenant_id=tenant_id, idempotency_key=key, public_url="https://api.test",
                                defaults=(600, 60), lease_timeout_s=1)


def test_the_fake_repository_has_the_real_ones_methods_and_parameters():
    assert_same_methods(Repository, FakeRepository)


def test_every_refusal_a_handler_raises_has_an_http_status():
    codes = set()
    for path in SERVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Refused"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                codes.add(node.args[0].value)
    assert codes and codes <= set(http.STATUS), codes - set(http.STATUS)


# --- the create saga ---------------------------------------------------------------------------

async def test_a_create_debits_one_credit_leases_a_browser_and_announces_the_session(uow):
    tenant_id = await tenant(uow)
    lease = FakeLease(OK)
    created = await create(uow, tenant_id, lease, CreateSession(timeout_s=99999))
    assert created["status"] == "running" and created["remaining_credits"] == 2
    assert created["timeout_s"] == 3600  # capped by the plan
    assert created["cdp_url"].startswith(f"wss://api.test/v1/sessions/{created['id']}/cdp?token=")
    [asked] = lease.asked
    assert (asked["tenant_id"], str(asked["session_id"]), asked["isolation"]) == (tenant_id, created["id"], "browser")
    [started] = uow.published(SessionStarted)
    assert (str(started.session_id), started.browser_id, started.warm) == (created["id"], OK.browser_id, True)
    assert uow.allowance(tenant_id)["credits_used"] == 1


@pytest.mark.parametrize("reply", [TimeoutError(), LeaseReply(ok=False, error="no_capacity", message="pool is empty"),
                                   LeaseReply(ok=True, browser_id=uuid.uuid4(), cdp_ws_url=None)])
async def test_a_lease_that_fails_refunds_the_credit_and_fails_the_session(uow, reply):
    tenant_id = await tenant(uow)
    with pytest.raises(Refused) as refused:
        await create(uow, tenant_id, FakeLease(reply))
    assert refused.value.code == "no_capacity"
    [session] = uow.sessions.values()
    assert session["status"] == "failed" and uow.allowance(tenant_id)["credits_used"] == 0
    assert uow.published(SessionStarted) == []


async def test_a_context_lease_without_a_context_is_never_relayed(uow):
    tenant_id = await tenant(uow)
    with pytest.raises(Refused):
        await create(uow, tenant_id, FakeLease(OK), CreateSession(isolation="context"))
    assert uow.allowance(tenant_id)["credits_used"] == 0


@pytest.mark.parametrize(("error", "raised", "code"), [("profile_not_found", NotFound, None),
                                                        ("profile_in_use", Refused, "profile_in_use"),
                                                        ("profiles_unavailable", Refused, "profiles_unavailable")])
async def test_a_refused_profile_is_the_callers_answer_and_refunds(uow, error, raised, code):
    tenant_id = await tenant(uow)
    lease = FakeLease(LeaseReply(ok=False, error=error))
    profile = ProfileOption(id=uuid.uuid4(), persist=True)
    with pytest.raises(raised) as refused:
        await create(uow, tenant_id, lease, CreateSession(profile=profile))
    assert getattr(refused.value, "code", None) == code
    assert (lease.asked[0]["profile_id"], lease.asked[0]["persist"]) == (profile.id, True)
    assert uow.allowance(tenant_id)["credits_used"] == 0


async def test_admission_refusals_debit_nothing_and_record_nothing(uow):
    pending = await tenant(uow, provisioned=False)
    with pytest.raises(Refused) as refused:
        await create(uow, pending)
    assert refused.value.code == "subscription_inactive"
    broke = await tenant(uow, credits=0)
    with pytest.raises(Refused) as refused:
        await create(uow, broke)
    assert refused.value.code == "insufficient_credits"
    busy = await tenant(uow)
    await create(uow, busy)
    await create(uow, busy)
    with pytest.raises(Refused) as refused:
        await create(uow, busy)
    assert (refused.value.code, refused.value.retry_after) == ("concurrency_limit", 5)
    assert len(uow.sessions) == 2 and uow.allowance(busy)["credits_used"] == 2
    with pytest.raises(Refused):
        await create(uow, uuid.uuid4())  # a tenant sessions never heard of


async def test_an_idempotent_retry_replays_the_first_answer_with_one_debit(uow):
    tenant_id = await tenant(uow)
    lease = FakeLease(OK)
    first = await create(uow, tenant_id, lease, key="key-1")
    again = await create(uow, tenant_id, lease, key="key-1")
    assert again["id"] == first["id"] and again["cdp_url"] == first["cdp_url"]
    assert len(lease.asked) == 1 and uow.allowance(tenant_id)["credits_used"] == 1
    with pytest.raises(Refused) as refused:
        await create(uow, tenant_id, lease, CreateSession(keep_alive=True), key="key-1")
    assert refused.value.code == "idempotency_conflict"


async def test_a_failed_create_releases_its_idempotency_key_so_a_retry_tries_again(uow):
    tenant_id = await tenant(uow)
    with pytest.raises(Refused):
        await create(uow, tenant_id, FakeLease(TimeoutError()), key="key-1")
    created = await create(uow, tenant_id, FakeLease(OK), key="key-1")
    assert created["status"] == "running" and uow.allowance(tenant_id)["credits_used"] == 1


# --- ending ------------------------------------------------------------------------------------

async def test_a_session_is_priced_with_the_plan_it_ran_under_after_a_plan_change(uow, plans):
    tenant_id = await tenant(uow, plan="cheap")
    created = await create(uow, tenant_id)
    # 9 min 30 s ago: 10 started minutes, however long the test itself takes (a few ms).
    uow.sessions[uuid.UUID(created["id"])]["started_at"] -= timedelta(minutes=9, seconds=30)
    await handlers.subscription_changed(SubscriptionChanged(tenant_id=tenant_id, plan="dear", status="active"),
                                        uow=uow, plans_file=plans, ended=Ends())
    ended = await ending.end_session(uow=uow, tenant_id=tenant_id, session_id=uuid.UUID(created["id"]),
                                     plans_file=plans, ended=Ends())
    [completed] = uow.published(SessionCompleted)
    assert completed.cost == Decimal("0.01") + Decimal("0.001") * 10  # cheap's minutes, not dear's
    assert ended["cost"] == "0.020000" and uow.tenants[tenant_id]["plan"] == "dear"


async def test_ending_is_once_and_only_for_the_sessions_tenant(uow, plans):
    tenant_id = await tenant(uow)
    session_id = uuid.UUID((await create(uow, tenant_id))["id"])
    with pytest.raises(NotFound):
        await ending.end_session(uow=uow, tenant_id=uuid.uuid4(), session_id=session_id, plans_file=plans,
                                 ended=Ends())
    ends = Ends()
    first = await ending.end_session(uow=uow, tenant_id=tenant_id, session_id=session_id, plans_file=plans,
                                     ended=ends)
    again = await ending.end_session(uow=uow, tenant_id=tenant_id, session_id=session_id, plans_file=plans,
                                     ended=ends)
    assert first == again and first["end_reason"] == "client"
    assert ends.calls == [(session_id, "client")] and len(uow.published(SessionCompleted)) == 1


async def test_a_cancellation_ends_the_tenants_running_sessions_and_sign_ins_once(uow, plans):
    tenant_id, other = await tenant(uow), await tenant(uow)
    mine = [uuid.UUID((await create(uow, tenant_id))["id"]) for _ in range(2)]
    theirs = uuid.UUID((await create(uow, other))["id"])
    canceled = SubscriptionChanged(tenant_id=tenant_id, plan="cheap", status="canceled")
    ends = Ends()
    await handlers.subscription_changed(canceled, uow=uow, plans_file=plans, ended=ends)
    await handlers.subscription_changed(canceled, uow=uow, plans_file=plans, ended=ends)  # redelivered
    assert sorted(ends.calls) == sorted((s, "canceled") for s in mine)
    assert uow.sessions[theirs]["status"] == "running" and uow.sign_ins == {tenant_id: "canceled"}
    with pytest.raises(Refused) as refused:
        await create(uow, tenant_id)
    assert refused.value.code == "subscription_inactive"


async def test_a_browser_reported_crashed_while_its_session_starts_never_runs_it(uow, plans):
    """warm_pool leased the browser and reported it crashed before the session was recorded
    running: the create fails and refunds rather than start a session in a dead browser."""
    tenant_id = await tenant(uow)

    async def lease_then_crash(tenant_id_, session_id, **_):
        await handlers.browser_crashed(BrowserCrashed(browser_id=OK.browser_id, tenant_id=tenant_id_,
                                                      session_id=session_id, detected_at=P1),
                                       uow=uow, plans_file=plans, ended=Ends())
        return OK

    with pytest.raises(Refused) as refused:
        await create(uow, tenant_id, lease_then_crash)
    assert refused.value.code == "no_capacity" and uow.allowance(tenant_id)["credits_used"] == 0
    [session] = uow.sessions.values()
    assert session["status"] == "failed" and not uow.published(SessionStarted)


async def test_a_crashed_shared_browser_ends_exactly_the_sessions_it_hosted(uow, plans):
    tenant_id = await tenant(uow)
    shared, own = (LeaseReply(ok=True, browser_id=uuid.uuid4(), cdp_ws_url="ws://b/1", context_id=f"ctx{i}")
                   for i in range(2))
    hosted = [uuid.UUID((await create(uow, tenant_id, FakeLease(shared), CreateSession(isolation="context")))["id"])]
    hosted.append(uuid.UUID((await create(uow, tenant_id, FakeLease(shared),
                                          CreateSession(isolation="context")))["id"]))
    uow.tenants[tenant_id]["max_concurrent_sessions"] = 3
    elsewhere = uuid.UUID((await create(uow, tenant_id, FakeLease(own), CreateSession(isolation="context")))["id"])
    ends = Ends()
    await handlers.browser_crashed(BrowserCrashed(browser_id=shared.browser_id, tenant_id=tenant_id,
                                                  detected_at=P1), uow=uow, plans_file=plans, ended=ends)
    assert sorted(ends.calls) == sorted((s, "browser_crashed") for s in hosted)
    assert uow.sessions[elsewhere]["status"] == "running"


async def test_a_late_grant_for_an_older_period_keeps_the_newer_one_current(uow):
    tenant_id = await tenant(uow)
    newer = PaymentVerified(tenant_id=tenant_id, subscription_id="sub_1", plan="cheap", period_start=P2,
                            period_end=P2 + timedelta(days=30), credits=5, limits=LIMITS)
    await handlers.payment_verified(newer, uow=uow)
    await handlers.payment_verified(newer, uow=uow)  # redelivered: the usage is kept
    await create(uow, tenant_id)
    late = PaymentVerified(tenant_id=tenant_id, subscription_id="sub_1", plan="cheap", period_start=P1,
                           period_end=P2, credits=3, limits=LIMITS)
    await handlers.payment_verified(late, uow=uow)
    usage = await views.usage(uow=uow, tenant_id=tenant_id)
    assert (usage["period_start"], usage["credits_granted"], usage["credits_used"]) == (P2.isoformat(), 5, 1)


async def test_a_profile_save_outcome_is_recorded_once(uow):
    tenant_id = await tenant(uow)
    profile = ProfileOption(id=uuid.uuid4(), persist=True)
    session_id = uuid.UUID((await create(uow, tenant_id, request=CreateSession(profile=profile)))["id"])
    assert (await views.get_session(uow=uow, tenant_id=tenant_id, session_id=session_id))["profile"]["save"] == "pending"
    saved = ProfileSaved(session_id=session_id, tenant_id=tenant_id, profile_id=profile.id, outcome="saved")
    await handlers.profile_saved(saved, uow=uow)
    await handlers.profile_saved(ProfileSaved(session_id=session_id, tenant_id=tenant_id, profile_id=profile.id,
                                              outcome="failed", message="late"), uow=uow)
    view = await views.get_session(uow=uow, tenant_id=tenant_id, session_id=session_id)
    assert view["profile"] == {"id": str(profile.id), "persist": True, "save": "saved"}


async def test_the_reaper_fails_stuck_creates_and_ends_expired_idle_and_abandoned_sessions(uow, plans):
    tenant_id = await tenant(uow, credits=10)
    uow.tenants[tenant_id]["max_concurrent_sessions"] = 10
    timed, idle, abandoned, kept = [uuid.UUID((await create(uow, tenant_id, request=r))["id"]) for r in (
        CreateSession(timeout_s=30), CreateSession(idle_timeout_s=20), CreateSession(), CreateSession(keep_alive=True))]
    stuck = uuid.uuid4()  # debited and recorded, never leased (sessions died mid-create)
    await FakeRepository(uow).insert_session(
        session_id=stuck, tenant_id=tenant_id, browser="chromium", plan="cheap", timeout_s=60, idle_timeout_s=60,
        keep_alive=False, token_hash=b"", period_start=P1, remaining_credits=0)
    uow.allowance(tenant_id)["credits_used"] += 1  # as its debit did
    for session_id in (abandoned, kept):
        await FakeRepository(uow).client_connected(session_id=session_id, max_relays=4)
        await FakeRepository(uow).client_disconnected(session_id=session_id)
    for session_id in (timed, abandoned, kept):  # traffic keeps them from idling out
        uow.sessions[session_id]["last_activity_at"] += timedelta(seconds=100)
    uow.advance(40)
    ends = Ends()
    reaped = await ending.reap(uow=uow, plans_file=plans, ended=ends, disconnect_grace_s=5, stuck_after_s=30)
    assert reaped == 4
    assert sorted(ends.calls) == sorted([(timed, "timeout"), (idle, "idle"), (abandoned, "disconnected")])
    assert uow.sessions[stuck]["status"] == "failed" and uow.sessions[kept]["status"] == "running"
    assert uow.allowance(tenant_id)["credits_used"] == 4  # the stuck one's credit came back


# --- API keys ----------------------------------------------------------------------------------

async def test_api_keys_are_capped_found_and_revoked(uow):
    tenant_id = await tenant(uow)
    with pytest.raises(NotFound):
        await api_keys.create_api_key(uow=uow, tenant_id=uuid.uuid4(), max_live=2)
    first = await api_keys.create_api_key(uow=uow, tenant_id=tenant_id, max_live=2)
    await api_keys.create_api_key(uow=uow, tenant_id=tenant_id, max_live=2)
    with pytest.raises(Refused) as refused:
        await api_keys.create_api_key(uow=uow, tenant_id=tenant_id, max_live=2)
    assert refused.value.code == "api_key_limit"
    keys = api_keys.ApiKeys(uow, ttl_s=0)
    assert await keys.tenant_for(first["api_key"]) == tenant_id
    await keys.revoke(uuid.UUID(first["id"]))
    for credential in (first["api_key"], None, "bf_live_guessed"):
        with pytest.raises(Refused) as refused:
            await keys.tenant_for(credential)
        assert refused.value.code == "unauthorized"
    with pytest.raises(NotFound):
        await keys.revoke(uuid.uuid4())
