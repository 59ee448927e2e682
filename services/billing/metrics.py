"""Billing's own Prometheus metrics (beside shared.metrics)."""
from prometheus_client import Counter, Gauge

WEBHOOKS = Counter("billing_stripe_webhooks_total", "Stripe webhook deliveries, by event type and result",
                   ["type", "result"])
EVENTS_APPLIED = Counter("billing_stripe_events_total", "Stripe events applied or postponed", ["type", "result"])
# Events that would tie a tenant to another Stripe customer: refused, kept in refused_events.
EVENTS_REFUSED = Counter("billing_stripe_events_refused_total",
                         "Stripe events refused for tying a tenant to another Stripe customer", ["type"])
EVENTS_PENDING = Gauge("billing_stripe_events_pending", "Stored Stripe events not yet processed")
METER_SENT = Counter("billing_meter_events_total", "Meter events sent to Stripe", ["result"])
METER_PENDING = Gauge("billing_meter_reports_pending", "Meter reports not yet accepted by Stripe")
# Counted as ledger entries are written (abs(amount) by kind: grant, debit, expire, adjustment).
CREDITS = Counter("billing_credits_total", "Credits moved through the ledger, by entry kind", ["kind"])
