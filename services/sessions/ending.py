"""How sessions end: by the client, an operator, the reaper (timeout, idle, disconnected, stuck
while starting), a crash or a cancellation. Each end is priced with the plan the session ran
under, and announced (session.completed, in the outbox) in the same transaction."""
import logging
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from uuid import UUID

from services.sessions import domain
from services.sessions.metrics import CREDITS, RUNNING, SESSIONS_ENDED
from services.sessions.ports import Ended, Tx, UnitOfWork
from shared.messages import SessionCompleted
from shared.plans import UnknownPlan, get_plan

log = logging.getLogger(__name__)
DEFAULT_PLANS = Path(__file__).parents[2] / "shared" / "plans.json"


def session_cost(plans_file: Path, plan: str, duration_ms: int) -> Decimal:
    try:
        return get_plan(plans_file, plan).session_cost(duration_ms)
    except UnknownPlan:
        log.warning("unknown plan %s, pricing with the default plans", plan)
        return get_plan(DEFAULT_PLANS, "starter").session_cost(duration_ms)


async def end_in_tx(tx: Tx, *, session_id: UUID, reason: str, plans_file: Path):
    """End a running session inside the caller's transaction; None if it was not running."""
    row = await tx.repo.get_session(session_id=session_id, for_update=True)
    if row is None or row["status"] != "running":
        return None
    ended_at = datetime.now(timezone.utc)
    duration_ms = max(int((ended_at - row["started_at"]).total_seconds() * 1000), 0)
    cost = session_cost(plans_file, row["plan"], duration_ms)
    done = await tx.repo.complete_session(session_id=session_id, ended_at=ended_at, duration_ms=duration_ms,
                                          cost=cost, end_reason=reason)
    await tx.publish(SessionCompleted(session_id=session_id, tenant_id=row["tenant_id"],
                                      browser_id=row["browser_id"], started_at=row["started_at"],
                                      ended_at=ended_at, duration_ms=duration_ms, end_reason=reason, cost=cost))
    SESSIONS_ENDED.labels(reason).inc()
    log.info("session ended", extra={"session_id": str(session_id), "tenant_id": str(row["tenant_id"]),
                                     "end_reason": reason, "duration_ms": duration_ms})
    return done


async def fail_in_tx(tx: Tx, *, session_id: UUID, failure: str) -> None:
    """A session that never ran: failed, its credit refunded, its idempotency key released."""
    row = await tx.repo.mark_failed(session_id=session_id, failure=failure[:200])
    if row is not None:
        await tx.repo.refund_credit(tenant_id=row["tenant_id"], period_start=row["period_start"])
        CREDITS.labels("refunded").inc()
        await tx.repo.release_idempotency_key(session_id=session_id)


async def end_session(*, uow: UnitOfWork, tenant_id: UUID | None, session_id: UUID, plans_file: Path,
                      ended: Ended, reason: str = "client") -> dict:
    """End a tenant's session (tenant_id None: any tenant's, for operators)."""
    async with uow.begin() as tx:
        row = await tx.repo.get_session(session_id=session_id, tenant_id=tenant_id, for_update=True)
        if row is None:
            raise domain.NotFound("session not found")
        if row["status"] == "starting":
            raise domain.Refused("conflict", "the session is still starting")
        done = await end_in_tx(tx, session_id=session_id, reason=reason, plans_file=plans_file)
    if done is not None:
        ended(session_id, reason)
        row = done
    return {**domain.session_view(row), "tenant_id": str(row["tenant_id"])}


async def reap(*, uow: UnitOfWork, plans_file: Path, ended: Ended, disconnect_grace_s: float,
               stuck_after_s: float, batch: int = 500) -> int:
    """End sessions past their max duration, idle or abandoned; refund ones stuck starting.
    Each is re-checked under its row lock, so traffic that just arrived is not cut off."""
    async with uow.connect() as tx:
        await tx.repo.delete_expired_idempotency_keys(ttl_s=domain.IDEMPOTENCY_TTL_S)
        await tx.repo.delete_old_crashed_leases(older_than_s=domain.CRASHED_LEASE_TTL_S)
    for count in range(batch):
        done = None
        async with uow.begin() as tx:
            item = await tx.repo.next_due(disconnect_grace_s=float(disconnect_grace_s),
                                          stuck_after_s=float(stuck_after_s))
            if item is None:
                return count
            if item["why"] == "stuck":
                await fail_in_tx(tx, session_id=item["id"], failure="stuck while starting")
            else:
                done = await end_in_tx(tx, session_id=item["id"], reason=item["why"], plans_file=plans_file)
        if done is not None:
            ended(item["id"], item["why"])
    return batch


async def refresh_running_gauge(*, uow: UnitOfWork) -> None:
    async with uow.connect() as tx:
        RUNNING.set(await tx.repo.count_running())
