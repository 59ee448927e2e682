"""Pure rules of the warm pool: browser states and pool sizing."""
import math
from typing import Literal

State = Literal["launching", "idle", "leased", "retiring", "dead"]

# z for the 97.5th percentile: the pool covers the refills outstanding at almost every lease.
Z = 1.96
MAX_UTILISATION = 0.95
RATE_WINDOW_S = 60.0  # lease rates are counted over the last minute


def refill_time(*, launch_seconds: float, lease_rate: float, launch_slots: int) -> float:
    """Expected time from a lease to its replacement being ready: the launch itself plus the
    wait for a free launch slot (Sakasegawa's M/M/c approximation of the queueing delay)."""
    rho = min(lease_rate * launch_seconds / launch_slots, MAX_UTILISATION)
    if rho <= 0:
        return launch_seconds
    wait = launch_seconds * rho ** math.sqrt(2 * (launch_slots + 1)) / (launch_slots * (1 - rho))
    return launch_seconds + wait


def pool_target(*, prewarm: int, max_concurrent: int, lease_rate: float, launch_seconds: float,
                launch_slots: int, hold_s: float = 0.0) -> int:
    """Idle + launching browsers to keep for a tenant (a base-stock policy).

    Every lease starts one replacement, so a lease is warm unless all `target` browsers are
    still being replaced. The number outstanding is ~Poisson with mean lease_rate x refill time
    (with the hold a refill that is not urgent waits first, `refill_hold_s`), so the target
    covers its mean plus Z standard deviations. Never below the plan's pre-warm count; never
    above the tenant's concurrency limit (more could never be used at once). The rate decays
    once leases stop, so the pool shrinks back to the pre-warm count.
    """
    if lease_rate <= 0:
        return prewarm
    outstanding = lease_rate * (hold_s + refill_time(launch_seconds=launch_seconds, lease_rate=lease_rate,
                                                     launch_slots=launch_slots))
    wanted = math.ceil(outstanding + Z * math.sqrt(outstanding) + 0.5)
    return max(prewarm, min(wanted, max(max_concurrent, prewarm)))


def launches_needed(*, target: int, idle: int, launching: int, host_free: int) -> int:
    return max(0, min(target - idle - launching, host_free))


def refill_is_urgent(*, target: int, idle: int) -> bool:
    """Refills run in the background (lowest CPU priority) while at least half the target is
    idle; below that the next sessions are about to miss, so they launch at normal priority."""
    return idle * 2 < target


def refill_hold_s(*, urgent: bool, since_lease_s: float | None, hold_s: float) -> float:
    """How much longer a refill's launches wait. An urgent one starts at once. Else it waits
    until `hold_s` after the oldest lease it refills for: its launch would compete for the CPU
    with that session's first steps, and the idle browsers cover the leases meanwhile. A refill
    no lease asked for (a crash, a reconcile, a new plan: `since_lease_s` None) does not wait."""
    if urgent or since_lease_s is None:
        return 0.0
    return max(0.0, hold_s - since_lease_s)


def excess_idle(*, target: int, idle: int, launching: int) -> int:
    """Idle browsers beyond the target (shrink); browsers still launching count toward it."""
    return max(0, min(idle, idle + launching - target))


def warm_hit_ratio(warm: int, cold: int) -> float:
    return warm / (warm + cold) if warm + cold else 1.0


class TenantRefused(Exception):
    """This host will not run a browser for that tenant (the message says why)."""


# --- context hosts (isolation "context") ------------------------------------------------------

def context_spare_slots(*, lease_rate: float, launch_seconds: float) -> int:
    """Free context slots to keep: the context leases expected while one more host launches,
    plus Z standard deviations (Poisson), so a lease rarely waits for a launch. A context itself
    takes milliseconds, so only a host's launch can make a lease cold."""
    if lease_rate <= 0:
        return 0
    during = lease_rate * launch_seconds
    return math.ceil(during + Z * math.sqrt(during) + 0.5)


def context_hosts_target(*, baseline: int, active: int, spare: int, per_browser: int, max_concurrent: int) -> int:
    """Open context hosts (taking new contexts) to keep for a tenant: room for its active contexts
    plus the spare slots, never below the baseline (warm hosts of a tenant that uses contexts),
    never more than its concurrency limit could fill."""
    wanted = math.ceil((active + spare) / per_browser)
    cap = max(baseline, math.ceil(max_concurrent / per_browser))
    return max(baseline, min(wanted, cap))


def context_launches_needed(*, target: int, open_hosts: int, launching: int, host_free: int) -> int:
    return max(0, min(target - open_hosts - launching, host_free))


def excess_context_hosts(*, target: int, open_hosts: int, launching: int, empty: int) -> int:
    """Empty open hosts beyond the target (a host serving a context is never retired)."""
    return max(0, min(empty, open_hosts + launching - target))
