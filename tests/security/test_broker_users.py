"""Issue 15, item 7 (broker): each service's RabbitMQ user publishes only its own events and
consumes only its own queues.

The attacker holds the RabbitMQ credentials the running sessions service was given and wants
free credits: announce `billing.payment_verified` itself, or read billing's queue.
"""
import json
import re
import uuid
from datetime import datetime, timedelta, timezone

import aio_pika
import aiormq.exceptions
import asyncpg
import httpx
import pytest

from shared.messages import PaymentVerified
from shared.plans import load_plans
from shared.settings import DEFAULT_PLANS_FILE
from tests.helpers import eventually

EXCHANGE = "browserfleet.events"
REFUSED = (aiormq.exceptions.ChannelAccessRefused, aiormq.exceptions.ChannelClosed)


def credentials_of(deployed, service: str) -> str:
    return deployed.procs[service].env["RABBITMQ_URL"]


async def publish(channel, routing_key: str) -> None:
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
    body = json.dumps({"message_id": str(uuid.uuid4()), "tenant_id": str(uuid.uuid4())}).encode()
    await exchange.publish(aio_pika.Message(body, content_type="application/json"), routing_key=routing_key)


async def ignore(message) -> None:
    pass


@pytest.fixture
async def as_sessions(deployed):
    connection = await aio_pika.connect(credentials_of(deployed, "sessions"))
    yield connection
    await connection.close()


async def test_every_service_runs_on_its_own_user(deployed):
    users = {name: aio_pika.connection.URL(credentials_of(deployed, name)).user for name in deployed.procs}
    assert len(set(users.values())) == 4 and "guest" not in users.values()


async def test_sessions_cannot_publish_billings_events(as_sessions):
    channel = await as_sessions.channel(publisher_confirms=True)
    with pytest.raises(REFUSED, match="ACCESS_REFUSED"):
        await publish(channel, "billing.payment_verified")


async def test_sessions_still_publishes_its_own(as_sessions):
    channel = await as_sessions.channel(publisher_confirms=True)
    await publish(channel, "sessions.security_probe")  # confirmed: no queue takes it, nothing happens


@pytest.mark.parametrize("queue", ["billing.sessions.session_completed", "billing.sessions.session_completed.dlq",
                                   "provisioner.billing.payment_verified"])
async def test_sessions_cannot_consume_another_services_queue(as_sessions, queue):
    channel = await as_sessions.channel()
    with pytest.raises(REFUSED, match="ACCESS_REFUSED"):
        q = await channel.get_queue(queue, ensure=False)
        await q.consume(ignore)


async def test_sessions_cannot_tap_billings_queue_with_a_binding(as_sessions):
    """Binding another service's queue to more events, or declaring a queue in its name."""
    channel = await as_sessions.channel()
    with pytest.raises(REFUSED, match="ACCESS_REFUSED"):
        q = await channel.get_queue("billing.sessions.session_completed", ensure=False)
        await q.bind(EXCHANGE, routing_key="#")
    channel = await as_sessions.channel()
    with pytest.raises(REFUSED, match="ACCESS_REFUSED"):
        await channel.declare_queue("billing.tap", durable=False, auto_delete=True)


async def test_an_event_forged_through_the_default_exchange_is_not_acted_on(deployed, as_sessions):
    """The default exchange takes any queue's name and RabbitMQ authorises it per exchange only,
    so sessions can put a `billing.payment_verified` straight into provisioner's queue: provisioner
    drops it, since only billing's user may have sent it (user_id, which RabbitMQ validates)."""
    tenant_id = uuid.uuid4()
    now = datetime.now(timezone.utc)
    forged = PaymentVerified(tenant_id=tenant_id, subscription_id="sub_forged", plan="professional",
                             period_start=now, period_end=now + timedelta(days=30), credits=50_000,
                             limits=load_plans(DEFAULT_PLANS_FILE)["professional"].limits)
    sessions_user = aio_pika.connection.URL(credentials_of(deployed, "sessions")).user
    channel = await as_sessions.channel(publisher_confirms=True, on_return_raises=True)
    for user_id in (None, sessions_user):
        await channel.default_exchange.publish(
            aio_pika.Message(forged.model_dump_json().encode(), content_type="application/json", user_id=user_id),
            routing_key="provisioner.billing.payment_verified", mandatory=True)

    queue = "provisioner.billing.payment_verified"
    async with httpx.AsyncClient() as http:
        async def dropped():
            text = (await http.get(f"{deployed.urls['provisioner']}/metrics")).text
            found = re.search(rf'^messages_handled_total{{queue="{queue}",result="forged"}} (\S+)$', text, re.M)
            return found and float(found.group(1)) >= 2
        await eventually(dropped, what="both forged messages dropped")
    conn = await asyncpg.connect(deployed.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM provisioner.tenants WHERE tenant_id = $1", tenant_id) == 0
    finally:
        await conn.close()
