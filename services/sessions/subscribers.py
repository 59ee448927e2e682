"""Who takes what: the sessions service's message subscriptions."""
from functools import partial
from uuid import uuid4

from faststream.rabbit import RabbitQueue

from services.sessions import handlers
from services.sessions.dashboard import sign_ins
from services.sessions.gateway import Relays
from shared.broker import events_exchange
from shared.messages import (BrowserCrashed, PaymentVerified, ProfileSaved, SessionCompleted, SubscriptionChanged,
                             TenantDeprovisioned, TenantProvisioned)
from shared.service import Runtime


async def _subscription_changed(event: SubscriptionChanged, **ports) -> None:
    await handlers.subscription_changed(event, **ports)
    if event.status == "canceled":  # after the inbox has it; ending sign-ins again is harmless
        await sign_ins.subscription_canceled(pool=ports["pool"], tenant_id=event.tenant_id)


def register(runtime: Runtime, *, relays: Relays) -> None:
    pool, plans_file = runtime.pool, runtime.settings.plans_file
    runtime.consumers.on(PaymentVerified, partial(handlers.payment_verified, pool=pool))
    runtime.consumers.on(TenantProvisioned, partial(handlers.tenant_provisioned, pool=pool))
    runtime.consumers.on(TenantDeprovisioned, partial(handlers.tenant_deprovisioned, pool=pool))
    runtime.consumers.on(SubscriptionChanged, partial(_subscription_changed, pool=pool, plans_file=plans_file,
                                                      ended=relays.end))
    runtime.consumers.on(BrowserCrashed, partial(handlers.browser_crashed, pool=pool, plans_file=plans_file,
                                                 ended=relays.end))
    runtime.consumers.on(ProfileSaved, partial(handlers.profile_saved, pool=pool))

    # Every replica hears every session end on a queue of its own, so the one holding a
    # session's websocket closes it, whichever replica ended the session.
    relay_ends = RabbitQueue(f"sessions.relay-ends.{uuid4().hex[:12]}", durable=False, exclusive=True,
                             auto_delete=True, routing_key=SessionCompleted.TYPE)

    @runtime.broker.subscriber(relay_ends, events_exchange(runtime.settings.events_exchange), no_reply=True,
                               title="sessions.relay-ends.<replica>",
                               description="every replica: close the ended session's websocket if it holds it")
    async def session_ended(event: SessionCompleted) -> None:
        relays.end(event.session_id, event.end_reason)
