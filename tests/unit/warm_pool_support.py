"""Driving warm_pool's handlers and pools against the fakes of tests/fakes/warm_pool.py: settings,
a provisioned tenant, a completed session, a metric's value, and waiting for background work."""
import asyncio
import uuid
from datetime import datetime, timezone
from decimal import Decimal

from prometheus_client import REGISTRY

from services.warm_pool import handlers
from services.warm_pool.pool_local import LocalPool
from services.warm_pool.settings import WarmPoolSettings
from shared.messages import SessionCompleted, TenantProvisioned
from shared.plans import Limits

HOST = "host-a"


def settings(**kw) -> WarmPoolSettings:
    # Refills start at once unless a test times their hold (tests/unit/test_warm_pool_refills.py).
    return WarmPoolSettings(_env_file=None, **{"max_browsers": 8, "launch_concurrency": 2, "lease_wait_s": 0,
                                               "refill_hold_s": 0, "replica_id": "replica-a", **kw})


async def settle(pool: LocalPool) -> None:
    """Wait until the pool's background refills and launches have all finished."""
    while pool.background.tasks:
        await asyncio.gather(*list(pool.background.tasks), return_exceptions=True)


async def provision(pool, uow, *, prewarm: int, max_concurrent: int = 10, namespace=None) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    await handlers.tenant_provisioned(TenantProvisioned(
        tenant_id=tenant_id, namespace=namespace or f"tenant-{tenant_id.hex[:12]}", plan="professional",
        limits=Limits(max_concurrent_sessions=max_concurrent, max_session_seconds=3600,
                      prewarm_browsers=prewarm)), pool=pool, uow=uow)
    if isinstance(pool, LocalPool):
        await settle(pool)
    return tenant_id


def completed(tenant_id, session_id, browser_id) -> SessionCompleted:
    now = datetime.now(timezone.utc)
    return SessionCompleted(session_id=session_id, tenant_id=tenant_id, browser_id=browser_id, started_at=now,
                            ended_at=now, duration_ms=1, end_reason="client", cost=Decimal("0.01"))


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0
