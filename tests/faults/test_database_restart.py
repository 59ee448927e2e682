"""Scenario 3: Postgres restarts mid-flow. /readyz goes red and back to green, requests in flight
fail cleanly (5xx with the JSON error shape, no half-writes), and work resumes by itself.

The outage (20 s) outlasts what the consumers' delivery limit would allow if every failed attempt
counted (8 attempts with backoff ≈ 16 s): messages consumed during it must wait, not dead-letter.
This machine's Postgres is shared with other test runs: the cluster is always started again."""
import asyncio
import time

import httpx
import pytest

from tests.faults.harness import Customer, audit, no_leaks, pg_ctl
from tests.helpers import eventually

pytestmark = pytest.mark.faults
OUTAGE_S = 20


async def _readiness(http: httpx.AsyncClient, platform) -> dict[str, int]:
    codes = {}
    for name, url in platform.urls.items():
        try:
            codes[name] = (await http.get(f"{url}/readyz", timeout=5)).status_code
        except httpx.HTTPError:
            codes[name] = 0
    return codes


def _clean_failure(r: httpx.Response) -> None:
    assert r.status_code >= 500, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]["code"] and r.json()["error"]["message"], r.text


async def test_postgres_restart_mid_flow(fault_platform, report):
    row = report("3. Postgres restart mid-flow",
                 f"`pg_ctlcluster 15 main stop`, {OUTAGE_S} s down, `start`, while webhooks, session creates, "
                 "ends and reads are in flight")
    platform = fault_platform()
    async with httpx.AsyncClient(timeout=30) as http:
        first, second = Customer(platform, http), Customer(platform, http)
        await first.pay()
        await first.ready()
        running = (await first.create()).json()
        events = (second.checkout(), second.invoice())
        in_flight = [asyncio.create_task(first.create()) for _ in range(5)]
        await asyncio.sleep(0.05)

        pg_ctl("stop")
        try:
            down = time.monotonic()
            flights = await asyncio.gather(*in_flight, return_exceptions=True)
            during = [await second.webhook(e) for e in events] + [
                await first.create(), await first.end(running["id"]), await first.usage_response()]
            red = await _readiness(http, platform)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        finally:
            pg_ctl("start")

        assert set(red.values()) == {503}, red
        for r in during:
            _clean_failure(r)
        created_in_flight = [f.json()["id"] for f in flights if isinstance(f, httpx.Response) and f.status_code == 201]
        for f in flights:
            assert not isinstance(f, Exception), repr(f)
            if f.status_code != 201:
                _clean_failure(f)

        await eventually(lambda: _all_green(http, platform), timeout=60, what="/readyz green again")
        # Stripe retries a webhook that got a 5xx; the client retries its requests.
        for event in events:
            assert (await second.webhook(event)).status_code == 200
        await second.ready(timeout=60)
        for session_id in [running["id"], *created_in_flight]:
            assert (await first.end(session_id)).status_code == 200
        for customer in (first, second):
            created = await customer.create()
            assert created.status_code == 201, created.text
            assert (await customer.end(created.json()["id"])).status_code == 200
        for customer in (first, second):
            await eventually(customer.reconciled, timeout=60, what="billing balance == sessions remaining")
        # Failed creates charge nothing (one stuck between debit and answer is refunded by the reaper).
        await eventually(lambda: _used_is(first, 2 + len(created_in_flight)), timeout=60, what="credits used")
        await no_leaks(platform)
        lost, doubled = await audit(platform, timeout=60)
    row.done(f"readyz red on all 4 then green; {len(during) + len(flights) - len(created_in_flight)} requests "
             "failed cleanly (5xx JSON error), none charged; retries then succeeded", lost, doubled)


async def _used_is(customer: Customer, n: int) -> bool:
    return (await customer.usage())["credits_used"] == n


async def _all_green(http: httpx.AsyncClient, platform) -> bool:
    return set((await _readiness(http, platform)).values()) == {200}
