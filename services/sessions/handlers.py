"""One function per command or message. Ports: the pool, `lease` (ask warm_pool for a browser)
and `ended` (close this replica's relays of a session that just ended)."""
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Literal
from uuid import UUID, uuid4

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from services.sessions import domain, repository as repo
from services.sessions.metrics import CREDITS, RUNNING, SESSIONS_CREATED, SESSIONS_ENDED
from shared import faults, http
from shared import outbox
from shared.db import transaction
from shared.http import APIError
from shared.inbox import first_delivery
from shared.messages import (BrowserCrashed, LeaseReply, PaymentVerified, ProfileSaved, SessionCompleted,
                             SessionStarted, SubscriptionChanged, TenantDeprovisioned, TenantProvisioned)
from shared.plans import UnknownPlan, get_plan, plan_limits

log = logging.getLogger(__name__)
CONSUMER = "sessions"
Lease = Callable[..., Awaitable[LeaseReply]]  # (tenant_id, session_id, *, isolation, profile_id, persist)
# Lease refusals about the profile named: the create's answer (the credit refunded).
PROFILE_REFUSALS = {"profile_not_found": (404, "not_found", "profile not found"),
                    "profile_in_use": (409, "profile_in_use",
                                       "another persisting session of this profile is running"),
                    "profiles_unavailable": (503, "profiles_unavailable",
                                             "profiles are not available on this deployment")}
Ended = Callable[[UUID, str], None]


class ProfileOption(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: UUID
    persist: bool = False


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    browser: str = Field("chromium", pattern="^chromium$")
    timeout_s: int | None = Field(None, ge=1, le=7 * 24 * 3600)
    idle_timeout_s: int | None = Field(None, ge=1, le=7 * 24 * 3600)
    keep_alive: bool = False
    isolation: Literal["browser", "context"] = "browser"
    # Start from a profile's state; with persist, save the state back to it when the session ends.
    profile: ProfileOption | None = None

    def fingerprint(self) -> bytes:
        body = self.model_dump()
        if body["isolation"] == "browser":  # as before the field existed: older keys still match
            del body["isolation"]
        if body["profile"] is None:
            del body["profile"]
        return domain.request_fingerprint(body)


def session_cost(plans_file: Path, plan: str, duration_ms: int) -> Decimal:
    try:
        return get_plan(plans_file, plan).session_cost(duration_ms)
    except UnknownPlan:
        log.warning("unknown plan %s, pricing with the default plans", plan)
        return get_plan(Path(__file__).parents[2] / "shared" / "plans.json", "starter").session_cost(duration_ms)


# --- tenants projection ---------------------------------------------------------------------


async def payment_verified(event: PaymentVerified, *, pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        await repo.upsert_tenant(conn, tenant_id=event.tenant_id, plan=event.plan,
                                 max_concurrent=event.limits.max_concurrent_sessions,
                                 max_session_seconds=event.limits.max_session_seconds)
        await repo.open_period(conn, tenant_id=event.tenant_id, period_start=event.period_start,
                               period_end=event.period_end, credits=event.credits)


async def tenant_provisioned(event: TenantProvisioned, *, pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        await repo.upsert_tenant(conn, tenant_id=event.tenant_id, plan=event.plan, provisioned=True,
                                 max_concurrent=event.limits.max_concurrent_sessions,
                                 max_session_seconds=event.limits.max_session_seconds)


async def tenant_deprovisioned(event: TenantDeprovisioned, *, pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        if await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            await repo.mark_deprovisioned(conn, tenant_id=event.tenant_id)


async def subscription_changed(event: SubscriptionChanged, *, pool: asyncpg.Pool, plans_file: Path,
                               ended: Ended) -> None:
    done: list[UUID] = []
    async with transaction(pool) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        limits = event.limits or plan_limits(plans_file, event.plan)
        if limits is not None:
            await repo.upsert_tenant(conn, tenant_id=event.tenant_id, plan=event.plan,
                                     max_concurrent=limits.max_concurrent_sessions,
                                     max_session_seconds=limits.max_session_seconds)
        await repo.set_tenant_status(conn, tenant_id=event.tenant_id, status=event.status)
        if event.status == "canceled":
            for session_id in await repo.running_ids(conn, tenant_id=event.tenant_id):
                if await end_in_tx(conn, session_id=session_id, reason="canceled", plans_file=plans_file):
                    done.append(session_id)
    for session_id in done:
        ended(session_id, "canceled")


async def browser_crashed(event: BrowserCrashed, *, pool: asyncpg.Pool, plans_file: Path, ended: Ended) -> None:
    rows = []
    async with transaction(pool) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        # A shared browser (context mode) hosts several sessions: without a session_id, all of them end.
        session_ids = ([event.session_id] if event.session_id
                       else await repo.sessions_for_browser(conn, browser_id=event.browser_id))
        rows = [await end_in_tx(conn, session_id=s, reason="browser_crashed", plans_file=plans_file)
                for s in session_ids]
    for row in rows:
        if row is not None:
            ended(row["id"], "browser_crashed")


async def profile_saved(event: ProfileSaved, *, pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        if await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            await repo.set_profile_save(conn, session_id=event.session_id, outcome=event.outcome,
                                        message=event.message)

# --- API keys -------------------------------------------------------------------------------


async def create_api_key(*, pool: asyncpg.Pool, tenant_id: UUID, max_live: int) -> dict:
    key = domain.new_api_key()
    key_id = uuid4()
    async with transaction(pool) as conn:
        # The tenant's row lock serializes its creates: the cap holds under concurrent requests.
        if await repo.get_tenant(conn, tenant_id=tenant_id, for_update=True) is None:
            raise APIError(404, "not_found", "tenant not known yet")
        if await repo.count_live_api_keys(conn, tenant_id=tenant_id) >= max_live:
            raise APIError(409, "api_key_limit", f"at most {max_live} live API keys per tenant: revoke one first")
        await repo.insert_api_key(conn, key_id=key_id, tenant_id=tenant_id, key_hash=domain.digest(key),
                                  prefix=key[:12])
    return {"id": str(key_id), "api_key": key}


class ApiKeys:
    """API key lookups; all their state is this replica's own.

    A valid key is cached for `ttl_s`, so a revoked key stops working within seconds. A rejected
    key is remembered for REJECTED_S and refused again without asking Postgres; the memory is
    keyed by the whole key's hash and only Postgres saying "no such live key" puts one there, so
    it cannot be made to refuse a valid key. Failures count against the client's address
    (`shared.http`): once that is throttled (429), only keys that have worked on this replica
    are still looked up, so honest clients sharing the address with a guesser keep working."""

    REJECTED_S = 300
    REMEMBERED = 10_000  # per memory; the oldest entries go first
    TOUCH_EVERY_S = 60  # last_used_at is written at most this often per key and replica

    def __init__(self, pool: asyncpg.Pool, ttl_s: float):
        self.pool, self.ttl_s = pool, ttl_s
        self._cache: dict[bytes, tuple[float, UUID]] = {}
        self._rejected: dict[bytes, float] = {}
        self._worked: dict[bytes, None] = {}

    async def tenant_for(self, key: str | None) -> UUID:
        if not key:
            raise APIError(401, "unauthorized", "API key required")
        key_hash = domain.digest(key)
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit and hit[0] > now:
            return hit[1]
        if key_hash not in self._worked:
            http.refuse_if_throttled()
        if self._rejected.get(key_hash, 0) > now:
            http.auth_failed()
            raise APIError(401, "unauthorized", "invalid API key")
        async with self.pool.acquire() as conn:
            row = await repo.find_api_key(conn, key_hash=key_hash)
            if row is not None and _touch_due(row["last_used_at"], ApiKeys.TOUCH_EVERY_S):
                await repo.touch_api_key(conn, key_id=row["id"])
        if row is None:
            self._cache.pop(key_hash, None)
            self._worked.pop(key_hash, None)
            _remember(self._rejected, key_hash, now + self.REJECTED_S)
            http.auth_failed()
            raise APIError(401, "unauthorized", "invalid API key")
        _remember(self._cache, key_hash, (now + self.ttl_s, row["tenant_id"]))
        _remember(self._worked, key_hash, None)
        return row["tenant_id"]

    async def revoke(self, key_id: UUID) -> None:
        async with transaction(self.pool) as conn:
            key_hash = await repo.revoke_api_key(conn, key_id=key_id)
        if key_hash is None:
            raise APIError(404, "not_found", "API key not found")
        self._cache.pop(bytes(key_hash), None)


def _touch_due(last_used_at: datetime | None, every_s: float) -> bool:
    return last_used_at is None or (datetime.now(timezone.utc) - last_used_at).total_seconds() > every_s


def _remember(memory: dict, key, value) -> None:
    memory.pop(key, None)
    memory[key] = value
    while len(memory) > ApiKeys.REMEMBERED:
        del memory[next(iter(memory))]

# --- sessions -------------------------------------------------------------------------------


async def create_session(request: CreateSession, *, pool: asyncpg.Pool, lease: Lease, tenant_id: UUID,
                         idempotency_key: str | None, public_url: str, defaults: tuple[int, int],
                         lease_timeout_s: float) -> dict:
    session_id, token = uuid4(), domain.new_session_token()
    replay = None
    # Not flushed on its own: the client hears of this debit only after the running-state (or
    # refund) commit below, whose flush covers it. Saves one WAL flush per create.
    async with transaction(pool, flush=False) as conn:
        tenant = await repo.get_tenant(conn, tenant_id=tenant_id, for_update=True)
        if idempotency_key:
            key_hash = domain.digest(idempotency_key)
            request_hash = request.fingerprint()
            masked = domain.mask_token(token, idempotency_key=idempotency_key, session_id=session_id)
            if not await repo.claim_idempotency_key(conn, tenant_id=tenant_id, key_hash=key_hash,
                                                    request_hash=request_hash, session_id=session_id,
                                                    token_masked=masked, ttl_s=domain.IDEMPOTENCY_TTL_S):
                replay = await repo.get_idempotency_key(conn, tenant_id=tenant_id, key_hash=key_hash)
                if bytes(replay["request_hash"]) != request_hash:
                    raise APIError(409, "idempotency_conflict",
                                   "this Idempotency-Key was used with a different request body")
        if replay is None:
            remaining = await _admit(conn, tenant)
            await repo.insert_session(
                conn, session_id=session_id, tenant_id=tenant_id, browser=request.browser, plan=tenant["plan"],
                timeout_s=domain.effective_timeout(request.timeout_s or defaults[0], tenant["max_session_seconds"]),
                idle_timeout_s=request.idle_timeout_s or defaults[1], keep_alive=request.keep_alive,
                token_hash=domain.digest(token), period_start=tenant["current_period_start"],
                remaining_credits=remaining, isolation=request.isolation,
                profile_id=request.profile.id if request.profile else None,
                profile_persist=request.profile.persist if request.profile else None)
    faults.point("sessions.after_debit")  # debited, no browser yet, not answered
    if replay is not None:
        return await _replay(pool, replay, idempotency_key, public_url, wait_s=lease_timeout_s + 5)

    try:
        profile = ({"profile_id": request.profile.id, "persist": request.profile.persist}
                   if request.profile else {})
        reply = await lease(tenant_id, session_id, isolation=request.isolation, **profile)
        error = None if reply.ok and reply.cdp_ws_url else (reply.error or "error")
        if error is None and request.isolation == "context" and not reply.context_id:
            error = "no context in the lease reply"  # never relay a context session unconfined
    except Exception as exc:  # timeout, unroutable, broker down: nothing charged, nothing leaked
        reply, error = None, type(exc).__name__
    faults.point("sessions.after_lease")  # browser leased, session not recorded running
    if error is None:
        async with transaction(pool) as conn:
            row = await repo.mark_running(conn, session_id=session_id, browser_id=reply.browser_id,
                                          browser_ws_url=reply.cdp_ws_url, warm=reply.warm,
                                          context_id=reply.context_id if request.isolation == "context" else None,
                                          downloads_path=reply.downloads_path)
            if row is not None:
                await outbox.add(conn, SessionStarted(session_id=session_id, tenant_id=tenant_id,
                                                      browser_id=reply.browser_id, warm=reply.warm,
                                                      started_at=row["started_at"]))
        if row is not None:
            faults.point("sessions.before_answer")  # running and recorded, not answered
            SESSIONS_CREATED.labels("created").inc()
            log.info("session started", extra={"session_id": str(session_id), "tenant_id": str(tenant_id),
                                               "warm": reply.warm, "isolation": request.isolation})
            return _created(row, token, public_url)
        error = "failed while starting"
    await fail_and_refund(pool, session_id=session_id, failure=error)
    if error in PROFILE_REFUSALS:
        SESSIONS_CREATED.labels(error).inc()
        status, code, message = PROFILE_REFUSALS[error]
        raise APIError(status, code, message)
    SESSIONS_CREATED.labels("no_capacity").inc()
    log.warning("session start failed", extra={"session_id": str(session_id), "error": error})
    raise APIError(503, "no_capacity", (reply and reply.message) or "no browser available right now, retry later")


async def _admit(conn: asyncpg.Connection, tenant) -> int:
    live = 0 if tenant is None else await repo.count_live_sessions(conn, tenant_id=tenant["tenant_id"])
    refusal = domain.refuse_admission(
        status=tenant and tenant["status"], provisioned=bool(tenant and tenant["provisioned"]),
        live_sessions=live, max_concurrent=tenant["max_concurrent_sessions"] if tenant else 0)
    if refusal is not None:
        headers = {"Retry-After": str(refusal.retry_after_s)} if refusal.retry_after_s else None
        raise APIError(refusal.status, refusal.code, refusal.message, headers=headers)
    remaining = None
    if tenant["current_period_start"] is not None:
        remaining = await repo.debit_credit(conn, tenant_id=tenant["tenant_id"],
                                            period_start=tenant["current_period_start"])
    if remaining is None:
        raise APIError(402, "insufficient_credits", "no credits left in this period")
    CREDITS.labels("debited").inc()
    return remaining


def _created(row, token: str, public_url: str) -> dict:
    return {**domain.session_view(row), "cdp_url": domain.cdp_url(public_url, row["id"], token),
            "remaining_credits": row["remaining_credits"]}


async def _replay(pool: asyncpg.Pool, key_row, idempotency_key: str, public_url: str, wait_s: float) -> dict:
    deadline = time.monotonic() + wait_s
    while True:
        async with pool.acquire() as conn:
            row = await repo.get_session(conn, session_id=key_row["session_id"])
        if row["status"] != "starting" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    if row["status"] in ("running", "completed"):
        token = domain.unmask_token(key_row["token_masked"], idempotency_key=idempotency_key,
                                    session_id=row["id"])
        return _created(row, token, public_url)
    raise APIError(503, "no_capacity", "no browser available right now, retry later")


async def fail_and_refund(pool: asyncpg.Pool, *, session_id: UUID, failure: str) -> None:
    async with transaction(pool) as conn:
        await _fail_in_tx(conn, session_id=session_id, failure=failure)


async def _fail_in_tx(conn: asyncpg.Connection, *, session_id: UUID, failure: str) -> None:
    row = await repo.mark_failed(conn, session_id=session_id, failure=failure[:200])
    if row is not None:
        await repo.refund_credit(conn, tenant_id=row["tenant_id"], period_start=row["period_start"])
        CREDITS.labels("refunded").inc()
        await repo.release_idempotency_key(conn, session_id=session_id)


async def end_in_tx(conn: asyncpg.Connection, *, session_id: UUID, reason: str, plans_file: Path):
    """End a running session inside the caller's transaction; None if it was not running."""
    row = await repo.get_session(conn, session_id=session_id, for_update=True)
    if row is None or row["status"] != "running":
        return None
    ended_at = datetime.now(timezone.utc)
    duration_ms = max(int((ended_at - row["started_at"]).total_seconds() * 1000), 0)
    cost = session_cost(plans_file, row["plan"], duration_ms)
    done = await repo.complete_session(conn, session_id=session_id, ended_at=ended_at, duration_ms=duration_ms,
                                       cost=cost, end_reason=reason)
    await outbox.add(conn, SessionCompleted(session_id=session_id, tenant_id=row["tenant_id"],
                                            browser_id=row["browser_id"], started_at=row["started_at"],
                                            ended_at=ended_at, duration_ms=duration_ms, end_reason=reason,
                                            cost=cost))
    SESSIONS_ENDED.labels(reason).inc()
    log.info("session ended", extra={"session_id": str(session_id), "tenant_id": str(row["tenant_id"]),
                                     "end_reason": reason, "duration_ms": duration_ms})
    return done


async def end_session(*, pool: asyncpg.Pool, tenant_id: UUID | None, session_id: UUID, plans_file: Path,
                      ended: Ended, reason: str = "client") -> dict:
    """End a tenant's session (tenant_id None: any tenant's, for operators)."""
    async with transaction(pool) as conn:
        row = await repo.get_session(conn, session_id=session_id, tenant_id=tenant_id, for_update=True)
        if row is None:
            raise APIError(404, "not_found", "session not found")
        if row["status"] == "starting":
            raise APIError(409, "conflict", "the session is still starting")
        done = await end_in_tx(conn, session_id=session_id, reason=reason, plans_file=plans_file)
    if done is not None:
        ended(session_id, reason)
        row = done
    return {**domain.session_view(row), "tenant_id": str(row["tenant_id"])}


async def admin_list_tenants(*, pool: asyncpg.Pool, limit: int) -> dict:
    async with pool.acquire() as conn:
        rows = await repo.list_tenants(conn, limit=limit)
    return {"data": [_tenant_view(r) for r in rows]}


async def admin_tenant(*, pool: asyncpg.Pool, tenant_id: UUID) -> dict:
    async with pool.acquire() as conn:
        row = await repo.tenant_overview(conn, tenant_id=tenant_id)
    if row is None:
        raise APIError(404, "not_found", "tenant not known")
    return _tenant_view(row)


def _tenant_view(row) -> dict:
    return {"tenant_id": str(row["tenant_id"]), "plan": row["plan"], "status": row["status"],
            "provisioned": row["provisioned"], "max_concurrent_sessions": row["max_concurrent_sessions"],
            "max_session_seconds": row["max_session_seconds"],
            "period_start": row["period_start"].isoformat() if row["period_start"] else None,
            "period_end": row["period_end"].isoformat() if row["period_end"] else None,
            "credits_granted": row["credits_granted"], "credits_used": row["credits_used"],
            "credits_remaining": max(row["credits_granted"] - row["credits_used"], 0),
            "sessions_running": row["sessions_running"], "api_keys": row["api_keys"]}


async def admin_list_sessions(*, pool: asyncpg.Pool, tenant_id: UUID | None, status: str | None,
                              limit: int) -> dict:
    async with pool.acquire() as conn:
        rows = await repo.list_all_sessions(conn, tenant_id=tenant_id, status=status, limit=limit)
    return {"data": [{**domain.session_view(r), "tenant_id": str(r["tenant_id"])} for r in rows]}


async def get_session(*, pool: asyncpg.Pool, tenant_id: UUID, session_id: UUID) -> dict:
    async with pool.acquire() as conn:
        row = await repo.get_session(conn, session_id=session_id, tenant_id=tenant_id)
    if row is None:
        raise APIError(404, "not_found", "session not found")
    return domain.session_view(row)


async def list_sessions(*, pool: asyncpg.Pool, tenant_id: UUID, status: str | None, limit: int,
                        cursor: str | None) -> dict:
    try:
        after = domain.Cursor.decode(cursor) if cursor else None
    except ValueError:
        raise APIError(422, "invalid_request", "invalid cursor") from None
    async with pool.acquire() as conn:
        rows = await repo.list_sessions(conn, tenant_id=tenant_id, status=status, limit=limit + 1, after=after)
    page = rows[:limit]
    next_cursor = domain.Cursor(page[-1]["created_at"], page[-1]["id"]).encode() if len(rows) > limit else None
    return {"data": [domain.session_view(r) for r in page], "next_cursor": next_cursor}


async def usage(*, pool: asyncpg.Pool, tenant_id: UUID) -> dict:
    async with pool.acquire() as conn:
        tenant = await repo.get_tenant(conn, tenant_id=tenant_id)
        allowance = await repo.current_allowance(conn, tenant_id=tenant_id)
        running = await repo.count_live_sessions(conn, tenant_id=tenant_id)
    granted = allowance["credits_granted"] if allowance else 0
    used = allowance["credits_used"] if allowance else 0
    return {"plan": tenant["plan"], "status": tenant["status"],
            "period_start": allowance["period_start"].isoformat() if allowance else None,
            "period_end": allowance["period_end"].isoformat() if allowance else None,
            "credits_granted": granted, "credits_used": used, "credits_remaining": max(granted - used, 0),
            "sessions_running": running}


async def reap(*, pool: asyncpg.Pool, plans_file: Path, ended: Ended, disconnect_grace_s: float,
               stuck_after_s: float, batch: int = 500) -> int:
    """End sessions past their max duration, idle or abandoned; refund ones stuck starting.
    Each is re-checked under its row lock, so traffic that just arrived is not cut off."""
    async with pool.acquire() as conn:
        await repo.delete_expired_idempotency_keys(conn, ttl_s=domain.IDEMPOTENCY_TTL_S)
    for count in range(batch):
        done = None
        async with transaction(pool) as conn:
            item = await repo.next_due(conn, disconnect_grace_s=float(disconnect_grace_s),
                                       stuck_after_s=float(stuck_after_s))
            if item is None:
                return count
            if item["why"] == "stuck":
                await _fail_in_tx(conn, session_id=item["id"], failure="stuck while starting")
            else:
                done = await end_in_tx(conn, session_id=item["id"], reason=item["why"], plans_file=plans_file)
        if done is not None:
            ended(item["id"], item["why"])
    return batch


async def refresh_running_gauge(*, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        RUNNING.set(await repo.count_running(conn))


async def browser_url(*, pool: asyncpg.Pool, tenant_id: UUID, session_id: UUID) -> tuple[str, str | None]:
    """The session's browser endpoint, and its BrowserContext in there (context sessions)."""
    async with pool.acquire() as conn:
        row = await repo.get_session(conn, session_id=session_id, tenant_id=tenant_id)
    if row is None:
        raise APIError(404, "not_found", "session not found")
    if row["status"] != "running":
        raise APIError(409, "conflict", "the session is not running")
    return row["browser_ws_url"], row["context_id"]
