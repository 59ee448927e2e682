"""Who takes what: the provisioner's message subscriptions, and its reconciler loop."""
from functools import partial

from services.provisioner import handlers
from services.provisioner.ports import Backend, UnitOfWork
from shared.messages import PaymentVerified, SubscriptionChanged
from shared.service import Runtime


def register(runtime: Runtime, *, uow: UnitOfWork, backend: Backend) -> None:
    async def payment_verified(event: PaymentVerified) -> None:
        await handlers.provision(event, uow=uow, backend=backend)

    async def subscription_changed(event: SubscriptionChanged) -> None:
        await handlers.subscription_changed(event, uow=uow, backend=backend)

    runtime.consumers.on(PaymentVerified, payment_verified)
    runtime.consumers.on(SubscriptionChanged, subscription_changed)
    if hasattr(backend, "inventory"):  # only a cluster can drift from the tenants table
        settings = runtime.settings
        runtime.every(settings.reconcile_interval_s, partial(
            handlers.reconcile, uow=uow, backend=backend, stale_seconds=settings.reconcile_stale_s))
