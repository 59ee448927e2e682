"""Who takes what: billing's message subscriptions."""
from functools import partial

from services.billing import handlers
from shared.messages import SessionCompleted, SessionStarted
from shared.plans import Plan
from shared.service import Runtime


def register(runtime: Runtime, *, plans: dict[str, Plan], on_usage=None) -> None:
    runtime.consumers.on(SessionStarted, partial(handlers.session_started, pool=runtime.pool))
    completed = partial(handlers.session_completed, pool=runtime.pool, plans=plans,
                        meter=runtime.settings.stripe_meter_enabled)

    async def session_completed(event: SessionCompleted) -> None:
        await completed(event)
        if on_usage:
            on_usage()

    runtime.consumers.on(SessionCompleted, session_completed)
