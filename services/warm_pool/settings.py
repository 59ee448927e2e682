import os
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from shared.settings import ServiceSettings

BROWSER_MIB = 200
HEADROOM_MIB = 1024


def default_max_browsers() -> int:
    """Host cap from memory: ~200 MiB a browser, leaving headroom for everything else."""
    try:
        total_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        total_mib = 4096
    return max(1, (int(total_mib * 0.75) - HEADROOM_MIB) // BROWSER_MIB)


def default_replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _memory_backed_tmp() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def default_chromium() -> str:
    """Chromium's headless shell where installed: the build made for automation (Playwright's
    default headless browser), ready in ~70 ms for ~0.17 CPU-s against ~250 ms and ~0.5 CPU-s
    for the full browser in headless mode (`python -m bench.launch_cost`)."""
    for path in ("/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium-headless-shell"):
        if os.access(path, os.X_OK):  # the binary itself, not Debian's wrapper script: one exec less
            return path
    return "/usr/bin/chromium"


class WarmPoolSettings(ServiceSettings):
    http_port: int = 8003
    # This service's own database login, for an operator who manages roles (DATABASE_URL unused then).
    warm_pool_database_url: SecretStr | None = None
    warm_pool_backend: Literal["local", "kubernetes"] = "local"
    chromium_path: str = Field(default_factory=default_chromium)
    # Memory-backed when the host has /dev/shm: profiles are small (~2 MiB), short-lived, and
    # Chromium's SQLite fsyncs would otherwise queue behind the databases' on the same disk.
    profile_root: Path = Field(default_factory=lambda: _memory_backed_tmp() / "browserfleet-browsers")
    # Set when sessions runs on another host or container (Compose): DevTools ports are then
    # forwarded on all interfaces and CDP URLs carry this host ("auto": this container's address).
    # Trusted networks only.
    browser_advertise_host: str | None = None
    max_browsers: int = Field(default_factory=default_max_browsers, ge=1)
    # Refills launched at once; on-demand launches for waiting sessions do not queue behind them.
    launch_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # A refill that is not urgent (at least half the tenant's pool target idle) starts this long
    # after the lease it refills for, leaving the CPU to that session's first steps; 0: at once.
    refill_hold_s: float = Field(1.0, ge=0)
    lease_confirm_timeout_s: float = 30
    lease_workers: int = 64
    db_pool_max: int = 20
    # At the host cap, how long a lease waits for a browser to free up before no_capacity.
    lease_wait_s: float = 3.0
    launch_timeout_s: float = 20
    replica_id: str = Field(default_factory=default_replica_id)
    reconcile_interval_s: float = 1.0
    monitor_interval_s: float = 0.25
    # A dead browser's row is kept this long (for audits and the lease-rate window, 60 s), then deleted.
    dead_browser_retention_s: float = Field(7 * 24 * 3600, ge=0)
    prune_interval_s: float = Field(3600, gt=0)

    # Context sessions (isolation "context"): BrowserContexts in warm browsers of the tenant's own.
    contexts_per_browser: int = Field(10, ge=1)
    # A context host takes no new context after this many, past this age, or once its memory grew
    # this much over what it held when it started; it is recycled when its last context ends.
    context_recycle_after: int = Field(200, ge=1)
    context_host_max_age_s: float = Field(3600, gt=0)
    context_recycle_memory_growth_mib: int = Field(768, ge=1)
    # Open hosts kept warm for a tenant whose plan pre-warms browsers and which leased a context
    # in the last CONTEXT_WARM_WINDOW_S (more follow its context-lease rate).
    context_prewarm_hosts: int = Field(1, ge=0)
    context_warm_window_s: float = Field(3600, gt=0)
    # A first about:blank page in each new context, as a launched browser starts with. Off: it
    # does not make the client's first new_page cheaper, and it makes every connect_over_cdp
    # initialise one more page (BENCHMARKS.md, "Context sessions").
    context_first_page: bool = False
    context_cdp_timeout_s: float = Field(10, gt=0)

    # The local backend's sandbox (docs/SECURITY.md). "off" only where namespaces cannot be had,
    # and then this replica serves one tenant only.
    browser_sandbox: Literal["on", "off"] = "on"
    # Host loopback ports every browser may reach as its own 127.0.0.1:PORT / localhost:PORT.
    browser_host_ports: str = ""
    browser_net_cidr: str = "10.213.0.0/16"  # one /30 per browser, for its veth pair
    browser_blocked_networks: str = ""  # more destinations to refuse, comma-separated CIDRs
    browser_uid_base: int = Field(2_100_000_000, ge=1000)  # browser N runs as this uid + its slot
    browser_state_dir: Path = Path("/run/browserfleet")
    browser_memory_mib: int = Field(1024, ge=128)
    browser_pids_max: int = Field(512, ge=32)
    browser_disk_mib: int = Field(512, ge=16)  # each browser's own filesystem (profile, downloads)
    browser_max_connections: int = Field(2048, ge=64)  # tracked connections per browser at once
    # All browsers of a warm_pool together, at most this share of the host's memory.
    browser_total_memory_fraction: float = Field(0.8, gt=0, le=1)
    browser_cpu_weight: int = Field(100, ge=1, le=10000)
    # A tenant's browsers together: their count (max concurrent + pre-warmed) times the above,
    # but never more than this fraction of the host's memory.
    browser_tenant_memory_fraction: float = Field(0.5, gt=0, le=1)

    @field_validator("browser_host_ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            if not part.isdigit() or not 0 < int(part) < 65536:
                raise ValueError(f"BROWSER_HOST_PORTS: {part!r} is not a port number")
            if int(part) in (53, 9222):  # the browser's own DNS relay and DevTools port
                raise ValueError(f"BROWSER_HOST_PORTS: {part} is taken inside every browser's sandbox")
        return value

    @field_validator("profile_encryption_key")
    @classmethod
    def _key_ring(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value().strip():
            from services.warm_pool.profile_archive import KeyRing
            KeyRing.parse(value.get_secret_value())  # a malformed ring stops the start, not the first save
        return value

    def profile_key_ring(self):
        """The KeyRing, or None when PROFILE_ENCRYPTION_KEY is unset (profiles unavailable)."""
        from services.warm_pool.profile_archive import KeyRing
        text = self.profile_encryption_key.get_secret_value().strip()
        return KeyRing.parse(text) if text else None

    def host_ports(self) -> list[int]:
        return sorted({int(p) for p in self.browser_host_ports.split(",") if p.strip()})

    def blocked_networks(self) -> list[str]:
        return [p.strip() for p in self.browser_blocked_networks.split(",") if p.strip()]

    # Profiles (issue 18). `kid:base64key[,kid:base64key…]` (32-byte AES keys; the first seals new
    # archives, the others still open old ones: rotation). Unset: profile operations answer 503
    # profiles_unavailable (never a key of its own, which would lose every profile at a restart).
    profile_encryption_key: SecretStr = SecretStr("")
    profile_store: Literal["postgres", "s3"] = "postgres"
    profile_s3_bucket: str = "browserfleet-profiles"
    profile_s3_endpoint_url: str | None = None
    profile_s3_region: str = "us-east-1"
    profile_s3_access_key: SecretStr | None = None
    profile_s3_secret_key: SecretStr | None = None
    profile_versions_kept: int = Field(3, ge=1)
    # A sealed archive larger than this is not saved (the previous version stays; the session says so).
    profile_max_mib: int = Field(100, ge=1)
    # Saves at once on this replica: each holds its archive in memory (up to ~4x PROFILE_MAX_MIB),
    # and a tenant may end many persisting sessions together.
    profile_save_concurrency: int = Field(2, ge=1)
    # After a tenant's cancel, its profiles (every version) are deleted this much later.
    profile_retention_s: float = Field(30 * 24 * 3600, ge=0)
    profile_sweep_interval_s: float = Field(300, gt=0)

    # Downloads: a session's files are moved here when it ends (<root>/<tenant>/<session>/<name>),
    # at most DOWNLOADS_MAX_MIB per session, and removed DOWNLOADS_RETENTION_S later. Replicas that
    # serve one another's sessions must share this directory (one host, or one volume).
    downloads_root: Path = Path("/var/lib/browserfleet/downloads")
    downloads_max_mib: int = Field(256, ge=1)
    downloads_retention_s: float = Field(24 * 3600, ge=0)
    downloads_sweep_interval_s: float = Field(300, gt=0)

    # Kubernetes backend. API: an explicit URL (tests, kubectl proxy), else KUBECONFIG, else in-cluster.
    kube_api_url: str | None = None
    kubeconfig: str | None = None
    kube_context: str | None = None
    kube_request_timeout_s: float = 10.0
    kube_retry_attempts: int = 6
    kube_retry_base_s: float = 0.2
    kube_retry_max_s: float = 5.0
    # How often leased pods are listed to notice one that died (one cluster-wide list per replica).
    kube_monitor_interval_s: float = 2.0

    def own_database_url(self) -> str | None:
        return self.warm_pool_database_url.get_secret_value() if self.warm_pool_database_url else None
