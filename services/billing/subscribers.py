"""Who takes what: billing's message subscriptions."""
from services.billing import handlers
from services.billing.ports import UnitOfWork
from shared.messages import SessionCompleted, SessionStarted
from shared.service import Runtime


def register(runtime: Runtime, *, uow: UnitOfWork, on_usage=None) -> None:
    async def session_started(event: SessionStarted) -> None:
        await handlers.session_started(event, uow=uow)

    async def session_completed(event: SessionCompleted) -> None:
        if await handlers.session_completed(event, uow=uow, meter=runtime.settings.stripe_meter_enabled) \
                and on_usage:
            on_usage()

    runtime.consumers.on(SessionStarted, session_started)
    runtime.consumers.on(SessionCompleted, session_completed)
