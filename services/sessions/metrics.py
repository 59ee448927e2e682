"""The sessions service's own Prometheus metrics (beside shared.metrics)."""
from prometheus_client import Counter, Gauge, Histogram

SESSIONS_CREATED = Counter("sessions_created_total", "POST /v1/sessions outcomes", ["result"])
SESSIONS_ENDED = Counter("sessions_ended_total", "Sessions ended, by end reason", ["reason"])
LEASE_SECONDS = Histogram("sessions_lease_seconds", "Lease RPC round trip, by outcome", ["outcome"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RELAYS_OPEN = Gauge("sessions_cdp_relays_open", "CDP websockets relayed by this replica")
RELAYED_BYTES = Counter("sessions_cdp_relayed_bytes_total", "CDP bytes relayed", ["direction"])
RELAYED_FRAMES = Counter("sessions_cdp_relayed_frames_total", "CDP frames relayed", ["direction"])
RUNNING = Gauge("sessions_running", "Sessions running on the platform (all replicas), from the database")
CREDITS = Counter("sessions_credits_total", "Credits debited at session start or refunded on failure",
                  ["operation"])
RESERVATIONS = Counter("sessions_context_reservations_total",
                       "Context leases held ready for a tenant's next create: leased, taken, released, "
                       "dropped (their browser crashed), refused (warm_pool had none)", ["event"])
for _event in ("leased", "taken", "released", "dropped", "refused"):
    RESERVATIONS.labels(_event)  # exported as 0 from the start
