"""The retry schedules of shared/ (tenacity): start-up waits, background restarts, unroutable rows."""
import asyncio

import pytest

from shared import cli, outbox, service


def test_an_unroutable_row_is_retried_after_1_2_4_up_to_30_s_and_parked_after_about_a_minute_and_a_half():
    delays = [outbox.retry_delay(n) for n in range(1, 8)]  # before the 2nd … 8th return (the default park)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert sum(delays) == 91


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """asyncio.sleep (which tenacity awaits) recorded and not waited for."""
    delays, real = [], asyncio.sleep

    async def sleep(seconds, *args, **kwargs):
        delays.append(seconds)
        await real(0)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    return delays


async def test_start_up_waits_for_a_dependency_that_is_still_starting(slept):
    calls = []

    async def connect():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("not yet")

    await service._retry("broker", connect, attempts=5)
    assert len(calls) == 3 and slept == [0.5, 1]


async def test_start_up_gives_up_after_its_attempts_with_the_dependency_s_own_error(slept):
    async def connect():
        raise ConnectionRefusedError("still down")

    with pytest.raises(ConnectionRefusedError, match="still down"):
        await service._retry("database", connect, attempts=7)
    assert slept == [0.5, 1, 2, 4, 5, 5]


async def test_start_up_does_not_retry_an_error_that_is_not_an_outage(slept):
    calls = []

    async def connect():
        calls.append(1)
        raise ValueError("bad URL")

    with pytest.raises(ValueError):
        await service._retry("database", connect)
    assert calls == [1] and slept == []


async def test_a_background_loop_that_crashes_is_restarted_a_second_later_and_can_be_cancelled(slept):
    runs, restarted, forever = [], asyncio.Event(), asyncio.Event()

    async def loop():
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("transient bug")
        restarted.set()
        await forever.wait()

    task = asyncio.create_task(service._forever("loop", loop))
    await restarted.wait()
    assert slept == [1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class FakeAdmin:
    def __init__(self, answers: dict):
        self.answers, self.calls = answers, []

    def call(self, service: str, method: str, path: str, **kw):
        self.calls.append((service, method, path, kw.get("params")))
        return self.answers.get((service, method, path), {"data": []})


def test_the_cli_lists_replays_and_discards_parked_events():
    parked = {"id": "6f1c", "routing_key": "billing.typo", "created_at": "2026-12-01T09:00:00.123Z",
              "parked_at": "2026-12-01T09:01:31Z", "attempts": 8, "last_error": "PublishError(NO_ROUTE)"}
    admin = FakeAdmin({("billing", "GET", "/v1/admin/outbox/parked"): {"data": [parked]},
                       ("billing", "POST", "/v1/admin/outbox/parked/replay"): {"replayed": 1}})
    listing = cli.run(cli.parser().parse_args(["outbox", "parked"]), admin)
    assert "billing.typo" in listing and "2026-12-01 09:01:31" in listing and "NO_ROUTE" in listing
    assert [c[0] for c in admin.calls] == list(cli.DEFAULT_URLS)  # every service asked

    replayed = cli.run(cli.parser().parse_args(["outbox", "replay", "billing", "--id", "6f1c"]), admin)
    assert replayed == "1 parked event(s) of billing back in its outbox"
    assert admin.calls[-1] == ("billing", "POST", "/v1/admin/outbox/parked/replay", {"id": "6f1c"})

    assert cli.run(cli.parser().parse_args(["outbox", "discard", "billing", "6f1c"]), admin) == "discarded 6f1c"
    assert admin.calls[-1][1:3] == ("DELETE", "/v1/admin/outbox/parked/6f1c")


async def test_the_relay_backs_off_2_4_8_then_10_s_only_while_the_broker_fails(slept):
    relay = outbox.OutboxRelay(None, None, exchange="events", dsn="postgresql://nowhere", poll_seconds=1.0)
    failures = iter([ConnectionError("broker down")] * 5)

    async def publish_pending():
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return 0

    async def listen():
        pass
    relay.publish_pending, relay._listen = publish_pending, listen
    await relay._drain()
    assert slept == [2, 4, 8, 10, 10]


async def test_a_handler_is_retried_in_place_through_an_outage_until_outage_retry_s(slept):
    from shared.broker import Consumers
    consumers = Consumers(None, service="scratch", events="events", delivery_limit=3, outage_retry_s=60)
    calls = []

    async def handler(event):
        calls.append(event)
        if len(calls) < 8:
            raise ConnectionResetError("database restarting")

    await consumers._handle_through_outages(handler, "event", "scratch.q")
    assert len(calls) == 8 and slept == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]

    slept.clear()
    consumers.outage_retry_s = 0.5  # the next pause (0.8 s) would pass it: the outage error is raised

    async def down(event):
        raise ConnectionResetError("still restarting")
    with pytest.raises(ConnectionResetError):
        await consumers._handle_through_outages(down, "event", "scratch.q")
    assert slept == [0.2, 0.4]

    async def bug(event):
        raise KeyError("not an outage")
    with pytest.raises(KeyError):
        await consumers._handle_through_outages(bug, "event", "scratch.q")
    assert slept == [0.2, 0.4]
