"""Who takes what: the provisioner's message subscriptions."""
from functools import partial

from services.provisioner import handlers
from shared.messages import PaymentVerified, SubscriptionChanged
from shared.service import Runtime


def register(runtime: Runtime, *, backend: handlers.Backend) -> None:
    runtime.consumers.on(PaymentVerified, partial(handlers.provision, pool=runtime.pool, backend=backend))
    runtime.consumers.on(SubscriptionChanged,
                         partial(handlers.subscription_changed, pool=runtime.pool, backend=backend))
