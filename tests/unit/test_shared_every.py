"""shared.service.every: the one background loop every service runs its periodic work in."""
import asyncio
import logging

from shared.service import every


async def test_a_failing_pass_is_logged_and_the_next_one_runs(caplog):
    calls = []

    async def sweep():
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("database away")
        if len(calls) == 3:
            raise asyncio.CancelledError  # stop the loop here

    with caplog.at_level(logging.ERROR):
        try:
            await every(0, sweep)()
        except asyncio.CancelledError:
            pass
    assert calls == [0, 1, 2]
    assert [r.task for r in caplog.records if r.message == "background pass failed"] == ["sweep"]


async def test_wake_runs_the_next_pass_before_the_interval():
    wake, calls = asyncio.Event(), []

    async def work():
        calls.append(1)

    task = asyncio.create_task(every(3600, work, wake=wake)())
    try:
        while not calls:
            await asyncio.sleep(0)
        wake.set()
        async with asyncio.timeout(5):  # an hour's interval: only the wake-up can bring pass two
            while len(calls) < 2:
                await asyncio.sleep(0.01)
        assert not wake.is_set()  # consumed: the loop waits again
    finally:
        task.cancel()
