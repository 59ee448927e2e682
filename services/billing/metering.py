"""Meter reports: each recorded session's minutes to Stripe's Billing Meter, until Stripe accepts them."""
import logging

from services.billing import domain, metrics
from services.billing.ports import StripeAPI, UnitOfWork

log = logging.getLogger(__name__)


async def send_meter_reports(*, uow: UnitOfWork, api: StripeAPI, event_name: str, max_backoff: float,
                             batch: int = 50) -> int:
    """Send one batch; rows stay locked while sending so replicas never send the same one at once.
    A crash after Stripe accepted but before the mark re-sends; Stripe dedupes by identifier."""
    sent = 0
    async with uow.begin() as tx:
        for row in await tx.repo.claim_meter_reports(limit=batch):
            delay_s = domain.backoff_seconds(row["attempts"], cap=max_backoff)
            if not row["stripe_customer_id"]:
                await tx.repo.postpone_meter_report(session_id=row["session_id"], error="no stripe customer yet",
                                                    delay_s=delay_s)
                continue
            try:
                await api.send_meter_event(event_name=event_name, identifier=str(row["session_id"]),
                                           customer=row["stripe_customer_id"], value=row["value"],
                                           timestamp=row["occurred_at"])
            except Exception as exc:
                log.warning("meter event not sent, will retry",
                            extra={"session_id": str(row["session_id"]), "error": repr(exc)[:300]})
                metrics.METER_SENT.labels("failed").inc()
                await tx.repo.postpone_meter_report(session_id=row["session_id"], error=repr(exc), delay_s=delay_s)
                continue
            await tx.repo.mark_meter_sent(session_id=row["session_id"])
            metrics.METER_SENT.labels("sent").inc()
            sent += 1
        metrics.METER_PENDING.set(await tx.repo.count_pending_meter_reports())
    return sent
