"""The messaging guarantees every service relies on, against real RabbitMQ and Postgres."""
import asyncio
import uuid

import aio_pika
import pytest
from prometheus_client import REGISTRY

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
    async with schema_pool.acquire() as conn:  # kept, unsent, while no relay runs
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 1
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
        async with db.transaction(schema_pool) as conn:  # a later message handled: the poison did not come back
            await outbox.add(conn, TenantDeprovisioned(tenant_id=uuid.uuid4(), namespace="third"))
        await eventually(lambda: attempts.get("third") == 1, what="a message after the poison")
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
        async with db.transaction(schema_pool) as conn:  # a later message handled: the first did not come back
            await outbox.add(conn, TenantDeprovisioned(tenant_id=uuid.uuid4(), namespace="after-outage"))
        await eventually(lambda: attempts[11:] == ["after-outage"], what="a message after the outage")
        assert attempts.count("during-outage") == 11
        assert (await dead.depths())[consumers.queue_names[0]] == 0
    finally:
        await dead.close()
        await relay.stop()
        await broker.stop()


async def _depth(dead: DeadLetters, queue: str) -> bool:
    return (await dead.depths())[queue] == 1


async def _depths(dead: DeadLetters, queue: str, n: int) -> bool:
    return (await dead.depths())[queue] == n


async def test_malformed_message_goes_straight_to_the_dlq(fresh_mq):
    handled = []

    async def handler(event):
        handled.append(event)

    broker, consumers = await _consumer(fresh_mq, handler)
    dead = DeadLetters(fresh_mq, consumers.queue_names)
    try:
        for body in (b'{"not": "a tenant event"}', b"\xff not even JSON"):
            await broker.publish(body, exchange=events_exchange(EXCHANGE),
                                 routing_key=TenantDeprovisioned.TYPE, persist=True)
        await eventually(lambda: _depths(dead, consumers.queue_names[0], 2), what="malformed messages dead-lettered")
        assert handled == []
        # and the queue still serves good events
        await broker.publish(TenantDeprovisioned(tenant_id=uuid.uuid4(), namespace="good").model_dump_json().encode(),
                             exchange=events_exchange(EXCHANGE), routing_key=TenantDeprovisioned.TYPE, persist=True)
        await eventually(lambda: [e.namespace for e in handled] == ["good"], what="a good event after them")
        assert isinstance(handled[0], TenantDeprovisioned)
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
    dead = await eventually(lambda: dlq.get(no_ack=True, fail=False, timeout=5), timeout=10, what="the dead letter")
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



async def test_a_fresh_clients_first_calls_at_once_all_get_their_replies(fresh_mq):
    """The first burst after a start (sessions' first creates): every call waits until the reply
    consumer is there. A publish before it fails with PRECONDITION_FAILED (a 503 to a customer)."""
    from pydantic import BaseModel

    class Ping(BaseModel):
        n: int

    connection = await aio_pika.connect(fresh_mq)
    channel = await connection.channel()
    queue = await channel.declare_queue("test.ping", durable=True)

    async def on_request(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, correlation_id=message.correlation_id), routing_key=message.reply_to)
    await queue.consume(on_request)

    async def later(i: int, client: RpcClient) -> Ping:  # arriving one by one, some while it connects
        await asyncio.sleep(i * 0.001)
        return await client.ask("test.ping", Ping(n=i), Ping, timeout=5)

    try:
        for _ in range(5):  # each a client that has not connected yet
            client = RpcClient(fresh_mq)
            try:
                replies = await asyncio.gather(*(later(i, client) for i in range(30)), return_exceptions=True)
            finally:
                await client.close()
            assert replies == [Ping(n=i) for i in range(30)], [r for r in replies if not isinstance(r, Ping)][:3]
    finally:
        await connection.close()

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


async def _insert_unroutable(pool, routing_key: str) -> uuid.UUID:
    """A row no queue is bound to (a consumer that was never deployed, a typo'd routing key)."""
    row_id = uuid.uuid4()
    async with db.transaction(pool) as conn:
        await conn.execute("INSERT INTO outbox (id, routing_key, body) VALUES ($1, $2, '{}')", row_id, routing_key)
        await conn.execute("SELECT pg_notify($1, '')", outbox.CHANNEL)
    return row_id


async def _outbox_row(pool, row_id: uuid.UUID):
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM outbox WHERE id = $1", row_id)


async def test_an_event_committed_after_a_never_routable_row_is_delivered_while_that_row_is_parked(
        schema_pool, fresh_db, fresh_mq):
    seen = []

    async def handler(event):
        seen.append(event.namespace)

    broker, _ = await _consumer(fresh_mq, handler)
    # No fallback poll to hide behind: only the commit's notification (or a back-off) wakes the relay.
    relay = OutboxRelay(schema_pool, broker, exchange=EXCHANGE, dsn=fresh_db, poll_seconds=3600, park_after=1)
    await relay.start()
    try:
        stuck = await _insert_unroutable(schema_pool, "scratch.nobody_listens")
        await eventually(lambda: _parked(schema_pool, stuck), what="the unroutable row parked")
        async with db.transaction(schema_pool) as conn:
            await outbox.add(conn, TenantDeprovisioned(tenant_id=uuid.uuid4(), namespace="behind-it"))
        # Generous bound, no speed claim: only well under the 10 s the relay used to back off for.
        await eventually(lambda: seen == ["behind-it"], timeout=5, what="the later event delivered")
        row = await _outbox_row(schema_pool, stuck)
        assert row["state"] == "parked" and "NO_ROUTE" in row["last_error"]
        assert REGISTRY.get_sample_value("outbox_returned_total", {"routing_key": "scratch.nobody_listens"}) >= 1
        assert REGISTRY.get_sample_value("outbox_parked") == 1
    finally:
        await relay.stop()
        await broker.stop()


async def _parked(pool, row_id: uuid.UUID) -> bool:
    row = await _outbox_row(pool, row_id)
    return row is not None and row["state"] == "parked"


async def test_a_row_unroutable_only_until_its_consumer_declares_its_queue_is_delivered_not_parked(
        schema_pool, fresh_db, fresh_mq):
    """A consumer still starting up (its queue not declared yet) gets the event on a later try."""
    seen = []

    async def handler(event):
        seen.append(event.namespace)

    publisher = make_broker(fresh_mq)
    await publisher.connect()
    await publisher.declare_exchange(events_exchange(EXCHANGE))
    relay = OutboxRelay(schema_pool, publisher, exchange=EXCHANGE, dsn=fresh_db, park_after=5)
    await relay.start()
    consumer = None
    try:
        async with db.transaction(schema_pool) as conn:
            event = TenantDeprovisioned(tenant_id=uuid.uuid4(), namespace="early")
            await outbox.add(conn, event)
        await eventually(lambda: _returned(schema_pool, event.message_id), what="returned: no queue yet")
        consumer, _ = await _consumer(fresh_mq, handler)
        await eventually(lambda: seen == ["early"], what="delivered once the queue exists")
        await eventually(lambda: _sent(schema_pool, event.message_id), what="marked sent, never parked")
        assert (await _outbox_row(schema_pool, event.message_id))["returned"] >= 1
    finally:
        await relay.stop()
        await publisher.stop()
        if consumer is not None:
            await consumer.stop()


async def _returned(pool, row_id: uuid.UUID) -> bool:
    row = await _outbox_row(pool, row_id)
    return row["returned"] >= 1 and row["state"] == "pending"


async def test_an_operator_lists_replays_and_discards_parked_events(schema_pool, fresh_db, fresh_mq):
    from fastapi import FastAPI
    import httpx
    from shared.http import APIError, error_response

    broker = make_broker(fresh_mq)
    await broker.connect()
    await broker.declare_exchange(events_exchange(EXCHANGE))
    relay = OutboxRelay(schema_pool, broker, exchange=EXCHANGE, dsn=fresh_db, park_after=1)
    await relay.start()
    app = FastAPI()
    app.include_router(outbox.router(schema_pool, "operator-token-0123456789"))
    app.add_exception_handler(APIError, lambda _, exc: error_response(exc.status, exc.code, exc.message))
    admin = {"authorization": "Bearer operator-token-0123456789"}
    connection = await aio_pika.connect(fresh_mq)
    try:
        typo, missing = (await _insert_unroutable(schema_pool, "scratch.typo"),
                         await _insert_unroutable(schema_pool, "scratch.not_deployed_yet"))
        await eventually(lambda: _parked(schema_pool, typo), what="typo parked")
        await eventually(lambda: _parked(schema_pool, missing), what="missing consumer parked")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://admin") as http:
            assert (await http.get("/v1/admin/outbox/parked")).status_code == 401
            listed = (await http.get("/v1/admin/outbox/parked", headers=admin)).json()["data"]
            assert {r["id"] for r in listed} == {str(typo), str(missing)}
            assert all("NO_ROUTE" in r["last_error"] for r in listed)

            # The missing consumer is deployed: its queue exists, and the replay delivers the event.
            channel = await connection.channel()
            queue = await channel.declare_queue("scratch.late_consumer", exclusive=True)
            await queue.bind(EXCHANGE, "scratch.not_deployed_yet")
            replayed = await http.post("/v1/admin/outbox/parked/replay", params={"id": str(missing)}, headers=admin)
            assert replayed.json() == {"replayed": 1}
            message = await eventually(lambda: queue.get(no_ack=True, fail=False), what="replayed event delivered")
            assert message.message_id == str(missing)
            await eventually(lambda: _sent(schema_pool, missing), what="replayed row marked sent")

            # The typo is nobody's: discarded for good.
            assert (await http.delete(f"/v1/admin/outbox/parked/{typo}", headers=admin)).json() == \
                {"discarded": str(typo)}
            gone = await http.delete(f"/v1/admin/outbox/parked/{typo}", headers=admin)
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
            assert (await http.get("/v1/admin/outbox/parked", headers=admin)).json()["data"] == []
            assert await _outbox_row(schema_pool, typo) is None
    finally:
        await connection.close()
        await relay.stop()
        await broker.stop()


async def _sent(pool, row_id: uuid.UUID) -> bool:
    return (await _outbox_row(pool, row_id))["state"] == "sent"


async def test_retention_deletes_old_sent_and_handled_rows_and_keeps_the_rest(schema_pool):
    from shared import inbox, service

    week, old, recent = 7 * 24 * 3600, "clock_timestamp() - interval '8 days'", "clock_timestamp() - interval '1 day'"
    rows = {name: uuid.uuid4() for name in ("old_sent", "recent_sent", "old_pending", "old_parked")}
    async with db.transaction(schema_pool) as conn:
        for name, state, published in (("old_sent", "sent", old), ("recent_sent", "sent", recent),
                                       ("old_pending", "pending", "NULL"), ("old_parked", "parked", "NULL")):
            await conn.execute(f"INSERT INTO outbox (id, routing_key, body, state, created_at, published_at)"
                               f" VALUES ($1, 'scratch.x', '{{}}', $2, {old}, {published})", rows[name], state)
        for i in range(25):  # more than one batch
            await conn.execute(f"INSERT INTO outbox (id, routing_key, body, state, published_at)"
                               f" VALUES ($1, 'scratch.x', '{{}}', 'sent', {old})", uuid.uuid4())
        old_message, recent_message = uuid.uuid4(), uuid.uuid4()
        await conn.execute(f"INSERT INTO inbox (message_id, consumer, handled_at) VALUES ($1, 'a', {old}),"
                           f" ($1, 'b', {old}), ($2, 'a', {recent})", old_message, recent_message)
    assert await outbox.delete_sent(schema_pool, older_than_s=week, batch=10) == 26

    async with db.transaction(schema_pool) as conn:
        await conn.execute(f"INSERT INTO outbox (id, routing_key, body, state, published_at)"
                           f" VALUES ($1, 'scratch.x', '{{}}', 'sent', {old})", rows["old_sent"])
    before = {t: REGISTRY.get_sample_value("retention_deleted_rows_total", {"table": t}) or 0 for t in ("outbox", "inbox")}
    task = asyncio.create_task(service.retention(schema_pool, outbox_s=week, inbox_s=week, interval_s=3600))
    try:
        async def kept():
            async with schema_pool.acquire() as conn:
                return ({r["id"] for r in await conn.fetch("SELECT id FROM outbox")},
                        {(r["message_id"], r["consumer"]) for r in await conn.fetch("SELECT * FROM inbox")})
        await eventually(lambda: _equal(kept(), ({rows["recent_sent"], rows["old_pending"], rows["old_parked"]},
                                                 {(recent_message, "a")})), what="old rows deleted")
        after = {t: REGISTRY.get_sample_value("retention_deleted_rows_total", {"table": t}) for t in before}
        assert after == {"outbox": before["outbox"] + 1, "inbox": before["inbox"] + 2}
        async with schema_pool.acquire() as conn:  # what is kept still deduplicates
            assert await inbox.first_delivery(conn, message_id=recent_message, consumer="a") is False
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _equal(value, expected):
    value = await value
    assert value == expected
    return True
