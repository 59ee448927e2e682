"""Scenario 4: a poison message ends in the dead-letter queue after the delivery limit, shows in
metrics and the admin DLQ view, and the service keeps consuming the rest."""
import re
import uuid
from datetime import datetime, timezone

import aio_pika
import httpx
import pytest

from tests.faults.harness import Customer, Db, audit, no_leaks
from tests.helpers import eventually
from shared.messages import SessionStarted
from shared.settings import ServiceSettings

pytestmark = pytest.mark.faults
EXCHANGE = "browserfleet.events"
MALFORMED = 40  # more than a consumer's prefetch (32): stuck deliveries would stop it consuming


async def publish(rabbitmq_url: str, routing_key: str, body: bytes) -> None:
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=True)
        await exchange.publish(aio_pika.Message(body, content_type="application/json", message_id=str(uuid.uuid4()),
                                                user_id=aio_pika.connection.URL(rabbitmq_url).user,
                                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                               routing_key=routing_key, mandatory=True)
    finally:
        await connection.close()


def metric(text: str, name: str, queue: str) -> float:
    match = re.search(rf'^{name}{{queue="{re.escape(queue)}"}} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_poison_message_goes_to_the_dead_letter_queue(fault_platform, report):
    limit = ServiceSettings.model_fields["delivery_limit"].default
    row = report("4. poison message",
                 f"session.started for a tenant billing never heard of (handler fails every time; limit {limit}) "
                 f"and {MALFORMED} session.completed bodies that are not JSON (more than the prefetch)")
    platform = fault_platform()
    billing = platform.urls["billing"]
    failing_queue, malformed_queue = "billing.sessions.session_started", "billing.sessions.session_completed"
    async with httpx.AsyncClient(timeout=30) as http:
        customer = Customer(platform, http)
        await customer.pay()
        await customer.ready()

        poison = SessionStarted(session_id=uuid.uuid4(), tenant_id=uuid.uuid4(), browser_id=uuid.uuid4(), warm=True,
                                started_at=datetime.now(timezone.utc))
        buggy_sessions = platform.procs["sessions"].env["RABBITMQ_URL"]  # billing takes sessions.* from it alone
        await publish(buggy_sessions, SessionStarted.TYPE, poison.model_dump_json().encode())
        for _ in range(MALFORMED):
            await publish(buggy_sessions, "sessions.session_completed", b'{"not": "a session"')

        async def dead_lettered():
            r = await http.get(f"{billing}/v1/admin/dlq", headers=platform.admin)
            assert r.status_code == 200, r.text
            depth = {q["queue"]: q["messages"] for q in r.json()["data"]}
            assert depth[failing_queue] == 1 and depth[malformed_queue] == MALFORMED, depth
            return depth

        depth = await eventually(dead_lettered, timeout=60, what="both poison messages dead-lettered")
        assert sum(depth.values()) == 1 + MALFORMED
        text = (await http.get(f"{billing}/metrics")).text
        assert metric(text, "messages_dead_lettered_total", failing_queue) == 1
        assert metric(text, "messages_dead_lettered_total", malformed_queue) == MALFORMED
        assert metric(text, "dlq_depth", failing_queue) == 1
        failed = float(re.search(rf'^messages_handled_total{{queue="{failing_queue}",result="failed"}} ([0-9.]+)$',
                                 text, re.M).group(1))
        assert failed == limit  # tried exactly up to the delivery limit, then set aside

        # The service keeps consuming: a real session afterwards is debited and billed.
        created = await customer.create()
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]
        assert (await customer.end(session_id)).status_code == 200
        await eventually(lambda: _billed(customer, session_id), timeout=30, what="next session billed")
        await eventually(customer.reconciled, timeout=30, what="ledger reconciles")
        still = (await http.get(f"{billing}/v1/admin/dlq", headers=platform.admin)).json()["data"]
        assert sum(q["messages"] for q in still) == 1 + MALFORMED
        await no_leaks(platform)
        lost, doubled = await audit(platform)
    row.done(f"all in billing's DLQs (the failing one after {limit} attempts, unparsable ones at once); "
             "visible in dlq_depth and messages_dead_lettered_total; later messages consumed", lost, doubled)


async def _billed(customer: Customer, session_id: str) -> bool:
    return session_id in await customer.billed_sessions()


async def test_unroutable_event_does_not_hold_up_the_outbox(fault_platform, report):
    row = report("4. unroutable event in an outbox",
                 "an event no queue is bound to, committed in billing's outbox ahead of a payment")
    platform = fault_platform()
    async with httpx.AsyncClient(timeout=30) as http:
        async with Db(platform.database_url) as db:
            stuck = uuid.uuid4()
            await db.conn.execute("INSERT INTO billing.outbox (id, routing_key, body) VALUES ($1, $2, '{}')",
                                  stuck, "billing.nobody_listens")
            customer = Customer(platform, http)
            await customer.pay()
            await customer.ready()  # payment.verified was published past the unroutable row
            pending = await db.conn.fetchrow("SELECT published_at, attempts, last_error FROM billing.outbox"
                                             " WHERE id = $1", stuck)
            assert pending["published_at"] is None and pending["attempts"] >= 1
            assert "NO_ROUTE" in pending["last_error"]
            text = (await http.get(f"{platform.urls['billing']}/metrics")).text
            assert float(re.search(r"^outbox_pending (\S+)$", text, re.M).group(1)) >= 1
            await db.conn.execute("DELETE FROM billing.outbox WHERE id = $1", stuck)  # the operator's call
        lost, doubled = await audit(platform)
    row.done("the rest of the outbox kept flowing; the unroutable row stays pending with NO_ROUTE as its "
             "error and counts in outbox_pending", lost, doubled)
