"""warm_pool's own Prometheus metrics (this replica's browsers)."""
from prometheus_client import Counter, Gauge, Histogram

IDLE = Gauge("warm_pool_idle_browsers", "Idle (pre-warmed) browsers run by this replica")
LEASED = Gauge("warm_pool_leased_browsers", "Browsers serving a session on this replica")
LAUNCHING = Gauge("warm_pool_launching_browsers", "Browsers starting on this replica")
LAUNCH_SECONDS = Histogram("warm_pool_launch_duration_seconds", "Chromium launch until DevTools answers",
                           buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20))
LEASES = Counter("warm_pool_leases_total", "Lease requests answered", ["result"])  # warm | cold | no_capacity | ...
WARM_HIT_RATIO = Gauge("warm_pool_warm_hit_ratio", "Share of the last 200 leases served from the idle pool")
CRASHES = Counter("warm_pool_browser_crashes_total", "Browsers that died unasked", ["state"])
SANDBOX_SECONDS = Histogram("warm_pool_sandbox_setup_seconds",
                            "Building one browser's sandbox (cgroups, network namespace, relays), before its launch",
                            buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1))
SANDBOX_REFUSED = Counter("warm_pool_sandbox_refused_total",
                          "Browsers not started: BROWSER_SANDBOX=off and another tenant's", [])
MEMORY_KILLS = Counter("warm_pool_browser_memory_kills_total", "Browsers killed at their cgroup's memory limit")
PRUNED = Counter("warm_pool_dead_browsers_pruned_total",
                 "Rows of dead browsers deleted after DEAD_BROWSER_RETENTION_S (by any replica's prune)")
CONTEXT_HOSTS = Gauge("warm_pool_context_hosts", "Browsers hosting context sessions on this replica")
ACTIVE_CONTEXTS = Gauge("warm_pool_active_contexts", "Context sessions' BrowserContexts live in this replica's hosts")
CONTEXT_LEASES = Counter("warm_pool_context_leases_total", "Context lease requests answered",
                         ["result"])  # warm | cold | no_capacity | error
CONTEXT_HOSTS_RECYCLED = Counter("warm_pool_context_hosts_recycled_total",
                                 "Empty context hosts retired (served, age, memory, excess, drained)")
DOWNLOAD_FILES = Counter("warm_pool_download_files_total", "Sessions' downloaded files: kept in the store at the "
                         "session's end, dropped (over DOWNLOADS_MAX_MIB, incomplete), expired (swept)", ["outcome"])
DOWNLOAD_BYTES = Counter("warm_pool_download_bytes_total", "Bytes of those files, by the same outcome", ["outcome"])
