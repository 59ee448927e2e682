"""Who takes what: the sessions service's message subscriptions."""
from functools import partial
from uuid import uuid4

from faststream.rabbit import RabbitQueue

from services.sessions import handlers
from services.sessions.relays import Relays
from services.sessions.reservations import Reservations
from services.sessions.ports import UnitOfWork
from shared.broker import events_exchange
from shared.messages import (BrowserCrashed, PaymentVerified, ProfileSaved, SessionCompleted, SubscriptionChanged,
                             TenantDeprovisioned, TenantProvisioned)
from shared.service import Runtime


def register(runtime: Runtime, *, uow: UnitOfWork, relays: Relays, reservations: Reservations | None = None) -> None:
    plans_file = runtime.settings.plans_file
    runtime.consumers.on(PaymentVerified, partial(handlers.payment_verified, uow=uow))
    runtime.consumers.on(TenantProvisioned, partial(handlers.tenant_provisioned, uow=uow))
    runtime.consumers.on(TenantDeprovisioned, partial(handlers.tenant_deprovisioned, uow=uow))
    runtime.consumers.on(SubscriptionChanged, partial(handlers.subscription_changed, uow=uow, plans_file=plans_file,
                                                      ended=relays.end))
    runtime.consumers.on(BrowserCrashed, partial(handlers.browser_crashed, uow=uow, plans_file=plans_file,
                                                 ended=relays.end))
    runtime.consumers.on(ProfileSaved, partial(handlers.profile_saved, uow=uow))

    # Every replica hears every session end on a queue of its own, so the one holding a
    # session's websocket closes it, whichever replica ended the session.
    @every_replica(runtime, "sessions.relay-ends", SessionCompleted,
                   "every replica: close the ended session's websocket if it holds it")
    async def session_ended(event: SessionCompleted) -> None:
        relays.end(event.session_id, event.end_reason)

    if reservations is None:
        return

    @every_replica(runtime, "sessions.crashed-browsers", BrowserCrashed,
                   "every replica: drop its context reservations in the crashed browser")
    async def browser_gone(event: BrowserCrashed) -> None:
        reservations.drop_browser(event.browser_id)


def every_replica(runtime: Runtime, name: str, event: type, description: str):
    """A subscriber on a queue of this replica's own (gone with it), bound to `event`'s type."""
    queue = RabbitQueue(f"{name}.{uuid4().hex[:12]}", durable=False, exclusive=True, auto_delete=True,
                        routing_key=event.TYPE)
    return runtime.broker.subscriber(queue, events_exchange(runtime.settings.events_exchange), no_reply=True,
                                     title=f"{name}.<replica>", description=description)
