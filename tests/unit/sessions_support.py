"""Helpers of sessions' service-layer tests (test_sessions_handlers, test_sessions_reservations)."""
import uuid
from datetime import datetime, timedelta, timezone

from services.sessions import handlers
from shared.messages import PaymentVerified, TenantProvisioned
from shared.plans import Limits

P1 = datetime(2026, 1, 1, tzinfo=timezone.utc)
P2 = P1 + timedelta(days=31)
LIMITS = Limits(max_concurrent_sessions=2, max_session_seconds=3600, prewarm_browsers=0)


async def tenant(uow, *, credits=3, plan="cheap", provisioned=True, limits=LIMITS) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    await handlers.payment_verified(PaymentVerified(tenant_id=tenant_id, subscription_id="sub_1", plan=plan,
                                                    period_start=P1, period_end=P2, credits=credits,
                                                    limits=limits), uow=uow)
    if provisioned:
        await handlers.tenant_provisioned(TenantProvisioned(tenant_id=tenant_id, namespace="t", plan=plan,
                                                            limits=limits), uow=uow)
    return tenant_id
