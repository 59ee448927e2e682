"""Prometheus metrics common to every service (each service adds its own beside these)."""
from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests, by route template", ["method", "route", "status"])
HTTP_DURATION = Histogram("http_request_duration_seconds", "HTTP request duration", ["method", "route"])
MESSAGES_HANDLED = Counter("messages_handled_total", "Messages consumed per queue, by result: ok, failed (retried or dead-lettered), malformed, forged, outage_retry", ["queue", "result"])
MESSAGE_DURATION = Histogram("message_handle_duration_seconds", "Message handling duration", ["queue"])
DEAD_LETTERED = Counter("messages_dead_lettered_total", "Messages this replica sent to <queue>.dlq", ["queue"])
DLQ_DEPTH = Gauge("dlq_depth", "Messages waiting in each dead-letter queue", ["queue"])
OUTBOX_PUBLISHED = Counter("outbox_published_total", "Outbox messages published", ["routing_key"])
OUTBOX_FAILURES = Counter("outbox_publish_failures_total", "Outbox publish attempts that failed")
OUTBOX_PENDING = Gauge("outbox_pending", "Outbox messages waiting to be published (parked ones aside)")
OUTBOX_LAG = Gauge("outbox_lag_seconds", "Age of the oldest unpublished outbox message")
OUTBOX_PARKED = Gauge("outbox_parked", "Outbox messages parked: returned unroutable until an operator acts")
OUTBOX_RETURNED = Counter("outbox_returned_total", "Outbox publishes returned unroutable (retried, then parked)",
                          ["routing_key"])
RETENTION_DELETED = Counter("retention_deleted_rows_total", "Sent outbox and handled inbox rows deleted past retention",
                            ["table"])
