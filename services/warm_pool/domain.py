"""Pure rules of the warm pool: browser states and pool sizing."""
import math
from typing import Literal

State = Literal["launching", "idle", "leased", "retiring", "dead"]

# z for the 97.5th percentile: the pool covers the refills outstanding at almost every lease.
Z = 1.96
MAX_UTILISATION = 0.95


def refill_time(*, launch_seconds: float, lease_rate: float, launch_slots: int) -> float:
    """Expected time from a lease to its replacement being ready: the launch itself plus the
    wait for a free launch slot (Sakasegawa's M/M/c approximation of the queueing delay)."""
    rho = min(lease_rate * launch_seconds / launch_slots, MAX_UTILISATION)
    if rho <= 0:
        return launch_seconds
    wait = launch_seconds * rho ** math.sqrt(2 * (launch_slots + 1)) / (launch_slots * (1 - rho))
    return launch_seconds + wait


def pool_target(*, prewarm: int, max_concurrent: int, lease_rate: float, launch_seconds: float,
                launch_slots: int) -> int:
    """Idle + launching browsers to keep for a tenant (a base-stock policy).

    Every lease starts one replacement, so a lease is warm unless all `target` browsers are
    still being replaced. The number outstanding is ~Poisson with mean lease_rate x refill time,
    so the target covers its mean plus Z standard deviations. Never below the plan's pre-warm
    count; never above the tenant's concurrency limit (more could never be used at once).
    The rate decays once leases stop, so the pool shrinks back to the pre-warm count.
    """
    if lease_rate <= 0:
        return prewarm
    outstanding = lease_rate * refill_time(launch_seconds=launch_seconds, lease_rate=lease_rate,
                                           launch_slots=launch_slots)
    wanted = math.ceil(outstanding + Z * math.sqrt(outstanding) + 0.5)
    return max(prewarm, min(wanted, max(max_concurrent, prewarm)))


def launches_needed(*, target: int, idle: int, launching: int, host_free: int) -> int:
    return max(0, min(target - idle - launching, host_free))


def refill_is_urgent(*, target: int, idle: int) -> bool:
    """Refills run in the background (lowest CPU priority) while at least half the target is
    idle; below that the next sessions are about to miss, so they launch at normal priority."""
    return idle * 2 < target


def excess_idle(*, target: int, idle: int, launching: int) -> int:
    """Idle browsers beyond the target (shrink); browsers still launching count toward it."""
    return max(0, min(idle, idle + launching - target))


def warm_hit_ratio(warm: int, cold: int) -> float:
    return warm / (warm + cold) if warm + cold else 1.0


class TenantRefused(Exception):
    """This host will not run a browser for that tenant (the message says why)."""
