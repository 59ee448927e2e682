"""Helpers of sessions' service-layer tests (test_sessions_handlers, test_sessions_reservations,
test_sessions_reservation_attacks)."""
import uuid
from datetime import datetime, timedelta, timezone

from services.sessions import handlers
from services.sessions.create import CreateSession, create_session
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


CONTEXT = CreateSession(isolation="context")
TTL_S = 10  # the reservations' CONTEXT_RESERVE_TTL_S in these tests


class Clock:
    """The reservations' monotonic clock, moved by the test."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def create_with(uow, lease, reservations, tenant_id, request=CONTEXT, key=None) -> dict:
    """A create through the handler, with context reservations."""
    return await create_session(request, uow=uow, lease=lease, tenant_id=tenant_id, idempotency_key=key,
                                public_url="https://api.test", defaults=(600, 60), lease_timeout_s=1,
                                reservations=reservations)


async def filled(reservations, tenant_id) -> None:
    """Wait for the background fill the last create started."""
    if task := reservations.filling.get(tenant_id):
        await task


async def one_reserved(uow, lease, reservations, tenant_id, **create_kw):
    """A first context create of the tenant's, and the one reservation it leaves held."""
    await create_with(uow, lease, reservations, tenant_id, **create_kw)
    await filled(reservations, tenant_id)
    [reserved] = reservations.held[tenant_id]
    return reserved
