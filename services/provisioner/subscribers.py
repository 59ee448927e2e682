"""Who takes what: the provisioner's message subscriptions, and its reconciler loop."""
import asyncio
import contextlib
import logging

from services.provisioner import handlers
from services.provisioner.ports import Backend, UnitOfWork
from shared.messages import PaymentVerified, SubscriptionChanged
from shared.service import Runtime

log = logging.getLogger(__name__)


def register(runtime: Runtime, *, uow: UnitOfWork, backend: Backend) -> None:
    async def payment_verified(event: PaymentVerified) -> None:
        await handlers.provision(event, uow=uow, backend=backend)

    async def subscription_changed(event: SubscriptionChanged) -> None:
        await handlers.subscription_changed(event, uow=uow, backend=backend)

    runtime.consumers.on(PaymentVerified, payment_verified)
    runtime.consumers.on(SubscriptionChanged, subscription_changed)
    if hasattr(backend, "inventory"):  # only a cluster can drift from the tenants table

        async def reconciler() -> None:
            settings = runtime.settings
            while not runtime.stopping.is_set():
                try:
                    await handlers.reconcile(uow=uow, backend=backend, stale_seconds=settings.reconcile_stale_s)
                except Exception as exc:
                    log.warning("reconcile pass failed", extra={"error": repr(exc)[:500]})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(runtime.stopping.wait(), settings.reconcile_interval_s)

        runtime.background(reconciler)
