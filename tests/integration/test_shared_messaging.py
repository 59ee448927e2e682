"""The messaging guarantees every service relies on, against real RabbitMQ and Postgres."""
import asyncio
import json
import uuid
from pathlib import Path

import aio_pika
import pytest

from shared import db, outbox
from shared.broker import Consumers, events_exchange, make_broker
from shared.dlq import DeadLetters
from shared.messages import TenantDeprovisioned
from shared.outbox import OutboxRelay
from shared.rpc import RpcClient, RpcTimeout, RpcUnroutable
from tests.helpers import eventually

EXCHANGE = "test.events"


@pytest.fixture
async def schema_pool(fresh_db, tmp_path):
    (tmp_path / "0001_none.sql").write_text("SELECT 1;")
    await db.migrate(fresh_db, schema="scratch", migrations_dir=tmp_path)
    pool = await db.create_pool(fresh_db, schema="scratch")
    yield pool
    await pool.close()


async def _consumer(url: str, handler, *, limit: int = 3):
    broker = make_broker(url)
    consumers = Consumers(broker, service="scratch", events=EXCHANGE, delivery_limit=limit)
    consumers.on(TenantDeprovisioned, handler)
    await broker.connect()
    await consumers.declare_dead_letters()
    await broker.start()
    return broker, consumers


async def test_outbox_row_written_before_a_crash_is_published_once_the_relay_runs(schema_pool, fresh_db, fresh_mq):
    seen = []

    async def handler(event):
        seen.append(event.namespace)

    broker, _ = await _consumer(fresh_mq, handler)
    # The state change commits with its outbox row while no relay runs (as if the service died here).
    async with db.transaction(schema_pool) as conn:
        await outbox.add(conn, TenantDeprovisioned(tenant_id=uuid.uuid4(), namespace="after-crash"))
    await asyncio.sleep(0.3)
    assert seen == []
    relay = OutboxRelay(schema_pool, broker, exchange=EXCHANGE, dsn=fresh_db)
    await relay.start()
    try:
        await eventually(lambda: seen == ["after-crash"], what="outbox message delivered")
        async with schema_pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    finally:
        await relay.stop()
        await broker.stop()


async def test_poison_message_is_dead_lettered_after_the_delivery_limit_and_the_rest_flow(schema_pool, fresh_db, fresh_mq):
    attempts: dict[str, int] = {}

    async def handler(event):
        attempts[event.namespace] = attempts.get(event.namespace, 0) + 1
        if event.namespace == "poison":
            raise RuntimeError("cannot handle this one")

    broker, consumers = await _consumer(fresh_mq, handler, limit=3)
    relay = OutboxRelay(schema_pool, broker, exchange=EXCHANGE, dsn=fresh_db)
    await relay.start()
    dead = DeadLetters(fresh_mq, consumers.queue_names)
    try:
        async with db.transaction(schema_pool) as conn:
            for name in ("first", "poison", "second"):
                await outbox.add(conn, TenantDeprovisioned(tenant_id=uuid.uuid4(), namespace=name))
        await eventually(lambda: attempts.get("first") == 1 and attempts.get("second") == 1, what="good messages")
        queue = consumers.queue_names[0]
        await eventually(lambda: _depth(dead, queue), timeout=20, what="poison in the DLQ")
        assert attempts["poison"] == 3  # exactly the delivery limit, then dead-lettered, not looping
        await asyncio.sleep(1.0)
        assert attempts["poison"] == 3

        # An operator fixes the cause and replays the DLQ: the message is handled.
        moved = await dead.replay(queue)
        assert moved == 1
        await eventually(lambda: attempts["poison"] == 4, what="replayed message redelivered")
    finally:
        await dead.close()
        await relay.stop()
        await broker.stop()


async def test_a_database_outage_longer_than_the_delivery_limit_does_not_dead_letter(schema_pool, fresh_db, fresh_mq):
    """Ten failures with Postgres 'down' against a delivery limit of 2: the message waits, then is handled."""
    import asyncpg
    attempts = []

    async def handler(event):
        attempts.append(event.namespace)
        if len(attempts) <= 10:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")

    broker, consumers = await _consumer(fresh_mq, handler, limit=2)
    consumers.outage_retry_s = 60
    relay = OutboxRelay(schema_pool, broker, exchange=EXCHANGE, dsn=fresh_db)
    await relay.start()
    dead = DeadLetters(fresh_mq, consumers.queue_names)
    try:
        async with db.transaction(schema_pool) as conn:
            await outbox.add(conn, TenantDeprovisioned(tenant_id=uuid.uuid4(), namespace="during-outage"))
        await eventually(lambda: len(attempts) == 11, timeout=40, what="handled once the database is back")
        await asyncio.sleep(0.5)
        assert len(attempts) == 11
        assert (await dead.depths())[consumers.queue_names[0]] == 0
    finally:
        await dead.close()
        await relay.stop()
        await broker.stop()


async def _depth(dead: DeadLetters, queue: str) -> bool:
    return (await dead.depths())[queue] == 1


async def test_malformed_message_goes_straight_to_the_dlq(fresh_mq):
    handled = []

    async def handler(event):
        handled.append(event)

    broker, consumers = await _consumer(fresh_mq, handler)
    dead = DeadLetters(fresh_mq, consumers.queue_names)
    try:
        await broker.publish(b'{"not": "a tenant event"}', exchange=events_exchange(EXCHANGE),
                             routing_key=TenantDeprovisioned.TYPE, persist=True)
        await eventually(lambda: _depth(dead, consumers.queue_names[0]), what="malformed message dead-lettered")
        assert handled == []
    finally:
        await dead.close()
        await broker.stop()


async def test_unroutable_publish_is_an_error_not_silence(fresh_mq):
    broker = make_broker(fresh_mq)
    await broker.connect()
    try:
        exchange = events_exchange(EXCHANGE)
        await broker.declare_exchange(exchange)
        with pytest.raises(Exception, match="(?i)unroutable|NO_ROUTE|312|returned"):
            await broker.publish(b"{}", exchange=exchange, routing_key="nobody.listens", persist=True)
    finally:
        await broker.stop()


async def test_quorum_queue_counts_reject_with_requeue_toward_the_limit(fresh_mq):
    """The mechanism we rely on for 3.x and 4.x alike: basic.reject(requeue) increments
    x-delivery-count on a quorum queue, and past x-delivery-limit the broker dead-letters."""
    connection = await aio_pika.connect_robust(fresh_mq)
    channel = await connection.channel()
    dlx = await channel.declare_exchange("probe.dlx", aio_pika.ExchangeType.DIRECT, durable=True)
    dlq = await channel.declare_queue("probe.dlq", durable=True, arguments={"x-queue-type": "quorum"})
    await dlq.bind(dlx, "probe")
    queue = await channel.declare_queue("probe", durable=True, arguments={
        "x-queue-type": "quorum", "x-dead-letter-exchange": "probe.dlx",
        "x-dead-letter-routing-key": "probe", "x-delivery-limit": 2})
    await channel.default_exchange.publish(aio_pika.Message(b"x", delivery_mode=2), routing_key="probe")
    counts = []
    for _ in range(5):
        message = await queue.get(no_ack=False, fail=False, timeout=5)
        if message is None:
            break
        counts.append(int((message.headers or {}).get("x-delivery-count", 0) or 0))
        await message.reject(requeue=True)
    await asyncio.sleep(0.5)
    dead = await dlq.get(no_ack=True, fail=False, timeout=5)
    await connection.close()
    assert counts == [0, 1, 2]
    assert dead is not None and dead.body == b"x"


async def _echo_server(url: str, queue_name: str, *, answer: bool = True):
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name, durable=True)

    async def on_request(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            if answer:
                await channel.default_exchange.publish(
                    aio_pika.Message(b"echo:" + message.body, correlation_id=message.correlation_id),
                    routing_key=message.reply_to)
    await queue.consume(on_request)
    return connection


async def test_rpc_calls_get_their_own_replies_and_fail_clearly_without_a_server(fresh_mq):
    client = RpcClient(fresh_mq)
    await client.connect()
    server = await _echo_server(fresh_mq, "test.echo")
    silent = await _echo_server(fresh_mq, "test.silent", answer=False)
    try:
        replies = await asyncio.gather(*(client.call("test.echo", str(i).encode(), timeout=5) for i in range(50)))
        assert replies == [f"echo:{i}".encode() for i in range(50)]
        with pytest.raises(RpcUnroutable):  # nobody declared the queue: told so, not left waiting
            await client.call("test.nobody", b"x", timeout=30)
        with pytest.raises(RpcTimeout):
            await client.call("test.silent", b"x", timeout=0.5)
        assert await client.call("test.echo", b"after", timeout=5) == b"echo:after"
    finally:
        await client.close()
        await server.close()
        await silent.close()


async def test_a_row_committed_while_the_relay_drains_is_published_without_waiting_for_the_poll(
        schema_pool, fresh_db, fresh_mq):
    seen = []

    async def handler(event):
        seen.append(event.namespace)

    broker, _ = await _consumer(fresh_mq, handler)
    relay = OutboxRelay(schema_pool, broker, exchange=EXCHANGE, dsn=fresh_db, poll_seconds=3600)
    drain = relay.publish_pending
    injected = []

    async def publish_pending_with_a_concurrent_writer() -> int:
        published = await drain()
        if published == 0 and not injected:  # the drain found nothing more: another service commits now
            injected.append(True)
            async with db.transaction(schema_pool) as conn:
                await outbox.add(conn, TenantDeprovisioned(tenant_id=uuid.uuid4(), namespace="mid-drain"))
            await eventually(relay._wake.is_set, what="the commit's notification heard")
        return published

    relay.publish_pending = publish_pending_with_a_concurrent_writer
    await relay.start()
    try:
        await eventually(lambda: seen == ["mid-drain"], what="published long before the hour-long poll")
    finally:
        await relay.stop()
        await broker.stop()
