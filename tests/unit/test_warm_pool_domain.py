"""Pool sizing: a simulated steady load at 80 % of launch capacity gets >= 95 % warm leases."""
import heapq
import random

import pytest

from services.warm_pool import domain


def simulate_warm_ratio(*, slots: int, launch_s: float, load: float, hold_s: float = 0.0, leases: int = 20_000,
                        seed: int = 7) -> float:
    """Poisson leases; each warm lease queues one refill launch on `slots` launchers. With `hold_s`,
    as LocalPool does: a refill that is not urgent waits until hold_s after the oldest lease not
    yet refilled for, and then starts with every other one held; an urgent one starts them all now."""
    rng = random.Random(seed)
    rate = load * slots / launch_s
    target = domain.pool_target(prewarm=0, max_concurrent=10_000, lease_rate=rate, launch_seconds=launch_s,
                                launch_slots=slots, hold_s=hold_s)
    idle, warm, now = target, 0, 0.0
    free_at = [0.0] * slots  # when each launcher is next free (a heap)
    ready: list[float] = []  # refill completion times
    held: list[float] = []  # leases whose refill waits

    def launch(count: int, at: float) -> None:
        for _ in range(count):
            start = max(at, heapq.heappop(free_at))
            done = start + launch_s * rng.uniform(0.7, 1.3)
            heapq.heappush(free_at, done)
            heapq.heappush(ready, done)

    for _ in range(leases):
        now += rng.expovariate(rate)
        if held and held[0] + hold_s <= now:
            launch(len(held), held[0] + hold_s)
            held.clear()
        while ready and ready[0] <= now:
            heapq.heappop(ready)
            idle += 1
        if idle:
            idle -= 1
            warm += 1
            held.append(now)
            wait = domain.refill_hold_s(urgent=domain.refill_is_urgent(target=target, idle=idle),
                                        since_lease_s=now - held[0], hold_s=hold_s)
            if not wait:
                launch(len(held), now)
                held.clear()
    return warm / leases


@pytest.mark.parametrize("slots,launch_s", [(1, 0.3), (2, 0.3), (2, 1.0), (4, 0.5), (8, 2.0)])
@pytest.mark.parametrize("load", [0.8, 0.5])
@pytest.mark.parametrize("hold_s", [0.0, 1.0])
def test_steady_load_up_to_80_percent_of_launch_capacity_is_served_warm(slots, launch_s, load, hold_s):
    assert simulate_warm_ratio(slots=slots, launch_s=launch_s, load=load, hold_s=hold_s) >= 0.95


def test_no_recent_leases_means_the_plan_prewarm_count():
    assert domain.pool_target(prewarm=5, max_concurrent=50, lease_rate=0, launch_seconds=0.3, launch_slots=2) == 5
    assert domain.pool_target(prewarm=0, max_concurrent=1, lease_rate=0, launch_seconds=0.3, launch_slots=2) == 0


def test_pool_grows_with_the_lease_rate_but_not_past_the_concurrency_limit():
    sizes = [domain.pool_target(prewarm=5, max_concurrent=50, lease_rate=r, launch_seconds=0.5, launch_slots=2)
             for r in (0.1, 1, 2, 3)]
    assert sizes == sorted(sizes) and sizes[0] == 5 and sizes[-1] > 5
    assert domain.pool_target(prewarm=5, max_concurrent=8, lease_rate=100, launch_seconds=1, launch_slots=1) == 8


def test_launches_fill_up_to_the_target_within_the_host_cap():
    assert domain.launches_needed(target=5, idle=2, launching=1, host_free=10) == 2
    assert domain.launches_needed(target=5, idle=2, launching=1, host_free=1) == 1
    assert domain.launches_needed(target=5, idle=6, launching=0, host_free=10) == 0


def test_shrinking_retires_only_idle_browsers_beyond_the_target():
    assert domain.excess_idle(target=5, idle=8, launching=0) == 3
    assert domain.excess_idle(target=5, idle=4, launching=3) == 2
    assert domain.excess_idle(target=5, idle=0, launching=9) == 0
    assert domain.excess_idle(target=5, idle=5, launching=0) == 0


def test_warm_hit_ratio():
    assert domain.warm_hit_ratio(19, 1) == 0.95
    assert domain.warm_hit_ratio(0, 0) == 1.0


def test_refills_stay_in_the_background_until_the_pool_is_half_empty():
    assert not domain.refill_is_urgent(target=10, idle=9)
    assert not domain.refill_is_urgent(target=10, idle=5)
    assert domain.refill_is_urgent(target=10, idle=4)
    assert domain.refill_is_urgent(target=1, idle=0)
    assert not domain.refill_is_urgent(target=0, idle=0)


def test_a_refill_waits_out_the_hold_after_its_lease_unless_it_is_urgent_or_no_lease_asked_for_it():
    assert domain.refill_hold_s(urgent=False, since_lease_s=0.25, hold_s=1.0) == 0.75
    assert domain.refill_hold_s(urgent=False, since_lease_s=1.5, hold_s=1.0) == 0
    assert domain.refill_hold_s(urgent=True, since_lease_s=0.0, hold_s=1.0) == 0
    assert domain.refill_hold_s(urgent=False, since_lease_s=None, hold_s=1.0) == 0  # a crash, a reconcile
    assert domain.refill_hold_s(urgent=False, since_lease_s=0.0, hold_s=0) == 0


def test_context_hosts_cover_active_contexts_plus_spare_within_the_plan():
    assert domain.context_spare_slots(lease_rate=0, launch_seconds=1) == 0
    spare = domain.context_spare_slots(lease_rate=2, launch_seconds=0.5)
    assert spare >= 2  # more than the leases expected during one launch
    # Unused: only the baseline; busy: room for the active ones and the spare slots.
    assert domain.context_hosts_target(baseline=1, active=0, spare=0, per_browser=8, max_concurrent=50) == 1
    assert domain.context_hosts_target(baseline=0, active=0, spare=0, per_browser=8, max_concurrent=50) == 0
    assert domain.context_hosts_target(baseline=1, active=8, spare=spare, per_browser=8, max_concurrent=50) == 2
    # Never more hosts than the tenant's concurrency limit could fill.
    assert domain.context_hosts_target(baseline=0, active=8, spare=40, per_browser=8, max_concurrent=10) == 2


def test_only_empty_context_hosts_beyond_the_target_are_retired():
    assert domain.excess_context_hosts(target=1, open_hosts=3, launching=0, empty=1) == 1
    assert domain.excess_context_hosts(target=1, open_hosts=3, launching=0, empty=3) == 2
    assert domain.excess_context_hosts(target=3, open_hosts=2, launching=1, empty=2) == 0
    assert domain.context_launches_needed(target=3, open_hosts=1, launching=1, host_free=5) == 1
    assert domain.context_launches_needed(target=3, open_hosts=0, launching=0, host_free=2) == 2
