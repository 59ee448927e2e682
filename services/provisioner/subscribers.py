"""Who takes what: the provisioner's message subscriptions, and its reconciler loop."""
import asyncio
import contextlib
import logging
from functools import partial

from services.provisioner import handlers
from shared.messages import PaymentVerified, SubscriptionChanged
from shared.service import Runtime

log = logging.getLogger(__name__)


def register(runtime: Runtime, *, backend: handlers.Backend) -> None:
    runtime.consumers.on(PaymentVerified, partial(handlers.provision, pool=runtime.pool, backend=backend))
    runtime.consumers.on(SubscriptionChanged,
                         partial(handlers.subscription_changed, pool=runtime.pool, backend=backend))
    if hasattr(backend, "inventory"):  # only a cluster can drift from the tenants table

        async def reconciler() -> None:
            settings = runtime.settings
            while not runtime.stopping.is_set():
                try:
                    await handlers.reconcile(pool=runtime.pool, backend=backend,
                                             stale_seconds=settings.reconcile_stale_seconds)
                except Exception as exc:
                    log.warning("reconcile pass failed", extra={"error": repr(exc)[:500]})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(runtime.stopping.wait(), settings.reconcile_interval_seconds)

        runtime.background(reconciler)
