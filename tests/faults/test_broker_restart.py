"""Scenario 2: RabbitMQ restarts mid-flow (`rabbitmqctl stop_app` / `start_app`). The services
reconnect by themselves, their outboxes drain, nothing is lost.

This machine's RabbitMQ is shared with other test runs: the outage is kept to a few seconds and
the app is always started again."""
import asyncio
import time

import httpx
import pytest

from tests.faults.harness import Customer, audit, no_leaks, rabbitmqctl
from tests.helpers import eventually

pytestmark = pytest.mark.faults
OUTAGE_S = 4


async def _all_ready(http: httpx.AsyncClient, platform, ok: bool) -> bool:
    codes = []
    for url in platform.urls.values():
        try:
            codes.append((await http.get(f"{url}/readyz", timeout=5)).status_code)
        except httpx.HTTPError:
            codes.append(0)
    return all(c == 200 for c in codes) if ok else all(c == 503 for c in codes)


async def test_rabbitmq_restart_mid_flow(fault_platform, report):
    row = report("2. RabbitMQ restart mid-flow",
                 f"`rabbitmqctl stop_app`, {OUTAGE_S} s down, `start_app`, while a payment, a session end, "
                 "session creates and a traffic loop are in flight")
    platform = fault_platform()
    async with httpx.AsyncClient(timeout=30) as http:
        first, second = Customer(platform, http), Customer(platform, http)
        await first.pay()
        await first.ready()
        running = (await first.create()).json()
        stop = asyncio.Event()
        outcomes: list[int | str] = []

        async def traffic():  # a client creating and ending sessions all through the outage
            while not stop.is_set():
                try:
                    r = await first.create()
                    outcomes.append(r.status_code)
                    if r.status_code == 201:
                        await first.end(r.json()["id"])
                    else:
                        assert r.status_code == 503 and r.json()["error"]["code"], r.text
                except httpx.TransportError as exc:
                    outcomes.append(type(exc).__name__)
                await asyncio.sleep(0.2)

        loop = asyncio.create_task(traffic())
        await asyncio.sleep(1)
        rabbitmqctl("stop_app")
        try:
            down = time.monotonic()
            paid = [await second.webhook(e) for e in (second.checkout(), second.invoice())]  # outbox: pending
            ended = await first.end(running["id"])  # committed; session.completed waits in the outbox
            refused = await first.create()
            red = await _all_ready(http, platform, ok=False)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        finally:
            rabbitmqctl("start_app")
        assert [p.status_code for p in paid] == [200, 200]
        assert ended.status_code == 200
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_capacity"
        assert red, "every service reports the broker down on /readyz"

        await eventually(lambda: _all_ready(http, platform, ok=True), timeout=60, what="all services ready again")
        await second.ready(timeout=90)  # the payment made during the outage reached everyone
        await eventually(lambda: _billed(first, running["id"]), timeout=60, what="session ended in the outage billed")
        stop.set()
        await loop
        for customer in (first, second):
            created = await customer.create()
            assert created.status_code == 201, created.text
            assert (await customer.end(created.json()["id"])).status_code == 200
            await eventually(customer.reconciled, timeout=60, what="billing balance == sessions remaining")
        await no_leaks(platform)
        lost, doubled = await audit(platform, timeout=60)
    refused_n = sum(1 for o in outcomes if o != 201)
    row.done(f"readyz red then green without restarts; payment, session end and {len(outcomes)} traffic "
             f"requests ({refused_n} refused cleanly with 503) all accounted; outboxes drained", lost, doubled)


async def _billed(customer: Customer, session_id: str) -> bool:
    return session_id in await customer.billed_sessions()
