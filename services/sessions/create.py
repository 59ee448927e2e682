"""Creating a session, a small saga: debit one credit and record the session `starting` (one
transaction), lease a browser from warm_pool, then record it `running` and announce it; any
failure after the debit fails the session and refunds the credit. An Idempotency-Key replays
the first create's answer. A context session without a profile takes a context leased ahead for
its tenant when there is one (reservations.py), and then all of it is one transaction."""
import asyncio
import logging
import time
from typing import Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from services.sessions import domain
from services.sessions.ending import fail_in_tx
from services.sessions.metrics import CREDITS, SESSIONS_CREATED
from services.sessions.ports import Lease, Tx, UnitOfWork
from services.sessions.reservations import Reserved, Reservations
from shared import faults
from shared.messages import LeaseReply, SessionStarted

log = logging.getLogger(__name__)


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


async def create_session(request: CreateSession, *, uow: UnitOfWork, lease: Lease, tenant_id: UUID,
                         idempotency_key: str | None, public_url: str, defaults: tuple[int, int],
                         lease_timeout_s: float, reservations: Reservations | None = None) -> dict:
    reservable = reservations is not None and request.isolation == "context" and request.profile is None
    reserved = reservations.take(tenant_id) if reservable else None
    if reserved is not None:
        created = await _create_on_reserved(request, reserved, uow=uow, reservations=reservations,
                                            tenant_id=tenant_id, idempotency_key=idempotency_key,
                                            public_url=public_url, defaults=defaults, lease_timeout_s=lease_timeout_s)
        if created is not None:
            return created
    session_id, token = uuid4(), domain.new_session_token()
    # Not flushed on its own: the client hears of this debit only after the running-state (or
    # refund) commit below, whose flush covers it. Saves one WAL flush per create.
    async with uow.begin(flush=False) as tx:
        replay = await _debit_and_record(tx, request, tenant_id=tenant_id, idempotency_key=idempotency_key,
                                         session_id=session_id, token=token, defaults=defaults)
    faults.point("sessions.after_debit")  # debited, no browser yet, not answered
    if replay is not None:
        return await _replay(uow, replay, idempotency_key, public_url, wait_s=lease_timeout_s + 5)

    reply, error = await _lease(lease, request, tenant_id=tenant_id, session_id=session_id)
    faults.point("sessions.after_lease")  # browser leased, session not recorded running
    if error is None:
        async with uow.begin() as tx:
            row = await _record_running(tx, request, session_id=session_id, tenant_id=tenant_id, reply=reply)
        if row is not None:
            if reservable:  # the tenant's next context create finds one ready
                reservations.replenish(tenant_id)
            return _started(row, token, public_url, warm=reply.warm, isolation=request.isolation)
        error = "failed while starting"
    async with uow.begin() as tx:
        await fail_in_tx(tx, session_id=session_id, failure=error)
    if refusal := domain.profile_refusal(error):
        SESSIONS_CREATED.labels(error).inc()
        raise refusal
    SESSIONS_CREATED.labels("no_capacity").inc()
    log.warning("session start failed", extra={"session_id": str(session_id), "error": error})
    raise domain.Refused("no_capacity", (reply and reply.message) or "no browser available right now, retry later")


async def _create_on_reserved(request: CreateSession, reserved: Reserved, *, uow: UnitOfWork,
                              reservations: Reservations, tenant_id: UUID, idempotency_key: str | None,
                              public_url: str, defaults: tuple[int, int], lease_timeout_s: float) -> dict | None:
    """The same create on a context leased ahead (reservations.py): debited, recorded and
    recorded running in one transaction, on the reservation's session id. None (nothing
    recorded) if warm_pool reported its browser gone: the caller leases as usual."""
    session_id, token = reserved.session_id, domain.new_session_token()
    try:
        async with uow.begin() as tx:
            replay = await _debit_and_record(tx, request, tenant_id=tenant_id, idempotency_key=idempotency_key,
                                             session_id=session_id, token=token, defaults=defaults)
            row = None if replay is not None else await _record_running(
                tx, request, session_id=session_id, tenant_id=tenant_id, reply=reserved.reply)
            if replay is None and row is None:
                raise _LeaseGone
    except domain.Refused:  # rolled back: nothing was recorded on its id
        reservations.give_back(reserved)
        raise
    except _LeaseGone:  # rolled back, debit included
        reservations.drop_browser(reserved.reply.browser_id)
        return None
    if replay is not None:
        reservations.give_back(reserved)
        return await _replay(uow, replay, idempotency_key, public_url, wait_s=lease_timeout_s + 5)
    reservations.replenish(tenant_id)
    return _started(row, token, public_url, warm=True, isolation=request.isolation)


class _LeaseGone(Exception):
    """The reserved context's browser was reported crashed (sessions.crashed_leases)."""


async def _debit_and_record(tx: Tx, request: CreateSession, *, tenant_id: UUID, idempotency_key: str | None,
                            session_id: UUID, token: str, defaults: tuple[int, int]):
    """Debit one credit and record the session `starting`; the first create's key row instead
    when this is a retry of it (nothing debited then)."""
    tenant = await tx.repo.get_tenant(tenant_id=tenant_id, for_update=True)
    if idempotency_key:
        replay = await _claim_key(tx, request, tenant_id=tenant_id, idempotency_key=idempotency_key,
                                  session_id=session_id, token=token)
        if replay is not None:
            return replay
    remaining = await _admit(tx, tenant)
    await tx.repo.insert_session(
        session_id=session_id, tenant_id=tenant_id, browser=request.browser, plan=tenant["plan"],
        timeout_s=domain.effective_timeout(request.timeout_s or defaults[0], tenant["max_session_seconds"]),
        idle_timeout_s=request.idle_timeout_s or defaults[1], keep_alive=request.keep_alive,
        token_hash=domain.digest(token), period_start=tenant["current_period_start"],
        remaining_credits=remaining, isolation=request.isolation,
        profile_id=request.profile.id if request.profile else None,
        profile_persist=request.profile.persist if request.profile else None)
    return None


async def _record_running(tx: Tx, request: CreateSession, *, session_id: UUID, tenant_id: UUID, reply: LeaseReply):
    """`running` on its browser, announced (SessionStarted confirms the lease); None if it is
    not `starting` any more."""
    row = await tx.repo.mark_running(session_id=session_id, browser_id=reply.browser_id,
                                     browser_ws_url=reply.cdp_ws_url, warm=reply.warm,
                                     context_id=reply.context_id if request.isolation == "context" else None,
                                     downloads_path=reply.downloads_path)
    if row is not None:
        await tx.publish(SessionStarted(session_id=session_id, tenant_id=tenant_id, browser_id=reply.browser_id,
                                        warm=reply.warm, started_at=row["started_at"]))
    return row


def _started(row, token: str, public_url: str, *, warm: bool, isolation: str) -> dict:
    faults.point("sessions.before_answer")  # running and recorded, not answered
    SESSIONS_CREATED.labels("created").inc()
    log.info("session started", extra={"session_id": str(row["id"]), "tenant_id": str(row["tenant_id"]),
                                       "warm": warm, "isolation": isolation})
    return _created(row, token, public_url)


async def _lease(lease: Lease, request: CreateSession, *, tenant_id: UUID, session_id: UUID):
    """warm_pool's reply and why it cannot be used (None: it can)."""
    try:
        profile = ({"profile_id": request.profile.id, "persist": request.profile.persist}
                   if request.profile else {})
        reply = await lease(tenant_id, session_id, isolation=request.isolation, **profile)
    except Exception as exc:  # timeout, unroutable, broker down: nothing charged, nothing leaked
        return None, type(exc).__name__
    error = None if reply.ok and reply.cdp_ws_url else (reply.error or "error")
    if error is None and request.isolation == "context" and not reply.context_id:
        error = "no context in the lease reply"  # never relay a context session unconfined
    return reply, error


async def _claim_key(tx: Tx, request: CreateSession, *, tenant_id: UUID, idempotency_key: str,
                     session_id: UUID, token: str):
    """None when this create now owns the key; else the first create's key row, to replay."""
    key_hash, request_hash = domain.digest(idempotency_key), request.fingerprint()
    masked = domain.mask_token(token, idempotency_key=idempotency_key, session_id=session_id)
    if await tx.repo.claim_idempotency_key(tenant_id=tenant_id, key_hash=key_hash, request_hash=request_hash,
                                           session_id=session_id, token_masked=masked,
                                           ttl_s=domain.IDEMPOTENCY_TTL_S):
        return None
    replay = await tx.repo.get_idempotency_key(tenant_id=tenant_id, key_hash=key_hash)
    if bytes(replay["request_hash"]) != request_hash:
        raise domain.Refused("idempotency_conflict", "this Idempotency-Key was used with a different request body")
    return replay


async def _admit(tx: Tx, tenant) -> int:
    live = 0 if tenant is None else await tx.repo.count_live_sessions(tenant_id=tenant["tenant_id"])
    refusal = domain.refuse_admission(
        status=tenant and tenant["status"], provisioned=bool(tenant and tenant["provisioned"]),
        live_sessions=live, max_concurrent=tenant["max_concurrent_sessions"] if tenant else 0)
    if refusal is not None:
        raise refusal
    remaining = None
    if tenant["current_period_start"] is not None:
        remaining = await tx.repo.debit_credit(tenant_id=tenant["tenant_id"],
                                               period_start=tenant["current_period_start"])
    if remaining is None:
        raise domain.Refused("insufficient_credits", "no credits left in this period")
    CREDITS.labels("debited").inc()
    return remaining


def _created(row, token: str, public_url: str) -> dict:
    return {**domain.session_view(row), "cdp_url": domain.cdp_url(public_url, row["id"], token),
            "remaining_credits": row["remaining_credits"]}


async def _replay(uow: UnitOfWork, key_row, idempotency_key: str, public_url: str, wait_s: float) -> dict:
    deadline = time.monotonic() + wait_s
    while True:
        async with uow.connect() as tx:
            row = await tx.repo.get_session(session_id=key_row["session_id"])
        if row["status"] != "starting" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    if row["status"] in ("running", "completed"):
        token = domain.unmask_token(key_row["token_masked"], idempotency_key=idempotency_key,
                                    session_id=row["id"])
        return _created(row, token, public_url)
    raise domain.Refused("no_capacity", "no browser available right now, retry later")
