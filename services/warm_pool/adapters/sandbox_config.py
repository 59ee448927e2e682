"""What a local sandbox is configured with, and the cgroup limits that follow from it: per
browser, per tenant (its plan's browsers, at most a share of the host) and for all browsers."""
import os
from dataclasses import dataclass, field
from pathlib import Path

from services.warm_pool.adapters import cgroups

IDLE_CPU_WEIGHT = 1  # a browser waiting in the pool (cgroup v2 units; v1 shares 10 against 1024)
MAX_CPU_WEIGHT = 10_000


@dataclass(frozen=True)
class SandboxConfig:
    host_ports: list[int]
    net_cidr: str = "10.213.0.0/16"
    blocked_networks: list[str] = field(default_factory=list)
    uid_base: int = 2_100_000_000
    state_dir: Path = Path("/run/browserfleet")
    browser_memory_mib: int = 1024
    browser_pids: int = 512
    browser_cpu_weight: int = 100
    browser_disk_mib: int = 512
    max_connections: int = 2048
    tenant_memory_fraction: float = 0.5
    total_memory_fraction: float = 0.8
    spare_networks: int = 2  # network namespaces built ahead, each for one browser only


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def all_browsers_limits(config: SandboxConfig) -> cgroups.Limits:
    """All browsers of this process together: most of the host, never all of it."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return cgroups.Limits(memory_bytes=int(host_memory_bytes() * config.total_memory_fraction),
                          pids=max(1024, pid_max // 2), cpu_weight=100)


def browser_and_tenant_limits(config: SandboxConfig, tenant_browsers: int) -> tuple[cgroups.Limits, cgroups.Limits]:
    """One browser's limits, and what all browsers of a tenant whose plan has `tenant_browsers` may take."""
    c = config
    browser = cgroups.Limits(memory_bytes=c.browser_memory_mib * 2**20, pids=c.browser_pids,
                             cpu_weight=c.browser_cpu_weight)
    share = int(host_memory_bytes() * c.total_memory_fraction * c.tenant_memory_fraction)
    tenant = cgroups.Limits(memory_bytes=min(share, browser.memory_bytes * max(1, tenant_browsers)),
                            pids=c.browser_pids * max(1, tenant_browsers),
                            cpu_weight=min(MAX_CPU_WEIGHT, c.browser_cpu_weight * max(1, tenant_browsers)))
    return browser, tenant
