"""Dead-letter queues of one service: depth (also as a metric) and replay, behind admin routes."""
import asyncio
import contextlib
from urllib.parse import unquote, urlsplit

import aio_pika
from fastapi import APIRouter, Request

from shared import metrics
from shared.http import APIError, error_responses, require_admin


class DeadLetters:
    def __init__(self, url: str, queue_names: list[str]):
        self.url = url
        self.queue_names = queue_names
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._lock = asyncio.Lock()

    async def _channel(self) -> aio_pika.abc.AbstractChannel:
        async with self._lock:
            if self._connection is None or self._connection.is_closed:
                self._connection = await aio_pika.connect_robust(self.url)
        return await self._connection.channel(publisher_confirms=True, on_return_raises=True)

    async def depths(self) -> dict[str, int]:
        channel = await self._channel()
        try:
            result = {}
            for name in self.queue_names:
                queue = await channel.declare_queue(f"{name}.dlq", passive=True)
                result[name] = queue.declaration_result.message_count
                metrics.DLQ_DEPTH.labels(name).set(result[name])
            return result
        finally:
            await channel.close()

    async def replay(self, name: str, *, limit: int = 1000) -> int:
        """Move up to `limit` dead-lettered messages back onto their queue; returns how many."""
        if name not in self.queue_names:
            raise KeyError(name)
        channel = await self._channel()
        moved = 0
        try:
            dlq = await channel.declare_queue(f"{name}.dlq", passive=True)
            while moved < limit:
                message = await dlq.get(no_ack=False, fail=False)
                if message is None:
                    break
                headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
                await channel.default_exchange.publish(
                    aio_pika.Message(message.body, headers=headers, content_type=message.content_type,
                                     message_id=message.message_id, type=message.type,
                                     user_id=unquote(urlsplit(self.url).username or "") or None,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=name, mandatory=True)
                await message.ack()
                moved += 1
        finally:
            await channel.close()
        return moved

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()


def router(dead_letters: DeadLetters, admin_token: str) -> APIRouter:
    routes = APIRouter(prefix="/v1/admin/dlq", tags=["admin"])

    @routes.get("", responses=error_responses())
    async def list_dead_letters(request: Request):
        require_admin(request, admin_token)
        depths = await dead_letters.depths()
        return {"data": [{"queue": q, "dead_letter_queue": f"{q}.dlq", "messages": n} for q, n in depths.items()]}

    @routes.post("/{queue}/replay", responses=error_responses(404))
    async def replay(queue: str, request: Request, limit: int = 1000):
        require_admin(request, admin_token)
        try:
            moved = await dead_letters.replay(queue, limit=limit)
        except KeyError:
            raise APIError(404, "not_found", f"no dead-letter queue for {queue}") from None
        return {"queue": queue, "replayed": moved}

    return routes
