"""What every consumer queue does with a delivery: the FastStream middleware around each typed
subscriber that `shared.broker.Consumers` registers."""
import asyncio
import logging
import time
from dataclasses import dataclass

from faststream import BaseMiddleware
from faststream.rabbit.annotations import RabbitMessage
from pydantic import BaseModel, ValidationError

from shared import metrics
from shared.logs import log_context

log = logging.getLogger(__name__)


def _delivery_count(message: RabbitMessage) -> int:
    headers = message.raw_message.headers or {}
    try:
        return int(headers.get("x-delivery-count", 0) or 0)
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class Subscription:
    """One consumer queue: the event it takes and who alone may have sent it."""
    queue: str
    model: type[BaseModel]
    delivery_limit: int
    own_user: str | None
    expected_publisher: str | None


class DeliveryPolicy(BaseMiddleware):
    """What every consumer queue does with a delivery, around its typed subscriber:

    - from a RabbitMQ user that may not send this type: dropped (acked, logged), never
      dead-lettered, or a replay from the DLQ would launder it under our own user;
    - not a valid event (not even JSON, or not the model): dead-lettered at once;
    - handled: acked after the handler returned (its effects are committed by then);
    - failed: rejected with requeue after a backoff, and without requeue (dead-lettered) on the
      attempt that reaches the delivery limit, whichever RabbitMQ version enforces it.
    """

    def __init__(self, msg, /, *, context, subscription: Subscription):
        super().__init__(msg, context=context)
        self.subscription = subscription

    async def consume_scope(self, call_next, msg: RabbitMessage) -> None:
        sub, started = self.subscription, time.perf_counter()
        publisher = msg.raw_message.user_id
        if sub.expected_publisher is not None and publisher not in (sub.expected_publisher, sub.own_user):
            log.error("message from a user that may not send it dropped",
                      extra={"queue": sub.queue, "publisher": publisher, "expected": sub.expected_publisher})
            metrics.MESSAGES_HANDLED.labels(sub.queue, "forged").inc()
            await msg.ack()
            return
        try:
            event = sub.model.model_validate_json(msg.body)
        except ValidationError as exc:
            log.error("malformed message dead-lettered", extra={"queue": sub.queue, "error": str(exc)[:500]})
            metrics.MESSAGES_HANDLED.labels(sub.queue, "malformed").inc()
            metrics.DEAD_LETTERED.labels(sub.queue).inc()
            await msg.reject(requeue=False)
            return
        headers = msg.raw_message.headers or {}
        token = log_context.set({"trace_id": str(headers.get("trace_id") or event.message_id),
                                 "message_id": str(event.message_id), "message_type": event.type, **_ids(event)})
        attempt = _delivery_count(msg) + 1
        try:
            await call_next(msg)
            log.info("message handled", extra={"queue": sub.queue, "attempt": attempt,
                                               "duration_ms": round((time.perf_counter() - started) * 1000, 1)})
        except Exception:
            last = attempt >= sub.delivery_limit
            log.exception("message handling failed", extra={"queue": sub.queue, "attempt": attempt,
                                                           "dead_lettered": last})
            metrics.MESSAGES_HANDLED.labels(sub.queue, "failed").inc()
            if last:
                metrics.DEAD_LETTERED.labels(sub.queue).inc()
                await msg.reject(requeue=False)
            else:
                await asyncio.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
                await msg.reject(requeue=True)
            return
        finally:
            log_context.reset(token)
            metrics.MESSAGE_DURATION.labels(sub.queue).observe(time.perf_counter() - started)
        metrics.MESSAGES_HANDLED.labels(sub.queue, "ok").inc()
        await msg.ack()


def _ids(event: BaseModel) -> dict:
    return {k: str(getattr(event, k)) for k in ("tenant_id", "session_id", "browser_id") if getattr(event, k, None)}
