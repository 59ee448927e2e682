"""Request/reply over RabbitMQ that does not serialize concurrent callers.

FastStream's `broker.request()` holds one lock per call; here every request is published with
its own correlation id and awaited on a future, and all replies arrive on one direct reply-to
consumer (`amq.rabbitmq.reply-to`), so any number of requests are in flight at once.
"""
import asyncio
import uuid
from typing import TypeVar

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel

Reply = TypeVar("Reply", bound=BaseModel)


class RpcTimeout(Exception):
    pass


class RpcUnroutable(Exception):
    """No queue took the request (the server side has never declared it)."""


class RpcClient:
    REPLY_TO = "amq.rabbitmq.reply-to"

    def __init__(self, url: str):
        self.url = url
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._pending: dict[str, asyncio.Future] = {}
        self._ready = asyncio.Lock()
        self._connecting = asyncio.Lock()

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self.url)
        self._connection.reconnect_callbacks.add(self._reconnected)
        await self._open_channel()

    async def _open_channel(self) -> None:
        # Confirms + returns raised: a request no queue takes fails at once instead of timing out.
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        # Direct reply-to: consume in no-ack mode on the pseudo-queue before publishing. The channel
        # is only used once that consumer exists: a publish before it fails PRECONDITION_FAILED.
        queue = await channel.get_queue(self.REPLY_TO, ensure=False)
        await queue.consume(self._on_reply, no_ack=True)
        self._channel = channel

    async def ask(self, queue: str, request: BaseModel, reply: type[Reply], *, timeout: float) -> Reply:
        """`request` as JSON to `queue`, its answer parsed as `reply`; connects on first use."""
        if self._channel is None:  # not connected yet, or connecting: wait for it
            async with self._connecting:
                if self._connection is None:
                    await self.connect()
        return reply.model_validate_json(await self.call(queue, request.model_dump_json().encode(), timeout=timeout))

    def _reconnected(self, *_) -> None:
        # The restored channel's direct reply-to consumer does not survive a broker restart
        # (publishes then fail with PRECONDITION_FAILED): open a fresh channel on next call.
        self._fail_pending("reconnected")
        self._channel = None

    def _fail_pending(self, why: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RpcTimeout(why))

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message.body)

    async def call(self, queue: str, body: bytes, *, timeout: float) -> bytes:
        if self._channel is None or self._channel.is_closed:
            async with self._ready:
                if self._channel is None or self._channel.is_closed:
                    await self._open_channel()
        correlation_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(body, correlation_id=correlation_id, reply_to=self.REPLY_TO,
                                 content_type="application/json",
                                 expiration=timeout),
                routing_key=queue,
                mandatory=True,
            )
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RpcTimeout(queue) from None
        except aio_pika.exceptions.DeliveryError:
            raise RpcUnroutable(queue) from None
        except (aio_pika.exceptions.ChannelPreconditionFailed, aio_pika.exceptions.ChannelInvalidStateError,
                RuntimeError):
            self._channel = None  # a broken channel: the next call opens a fresh one
            raise
        finally:
            self._pending.pop(correlation_id, None)

    async def close(self) -> None:
        self._fail_pending("closing")
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
