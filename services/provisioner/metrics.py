from prometheus_client import Counter, Gauge

FAILURES = Counter("provisioner_failures_total", "Tenant operations that failed after retries", ["operation"])
TENANTS = Gauge("provisioner_tenants", "Tenants by status, as of the last reconcile", ["status"])
RECONCILE_ACTIONS = Counter("provisioner_reconcile_actions_total", "Changes made by the reconciler", ["kind"])
