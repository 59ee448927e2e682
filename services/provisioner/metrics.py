from prometheus_client import Counter, Gauge, Histogram

FAILURES = Counter("provisioner_failures_total", "Tenant operations that failed after retries", ["operation"])
TENANTS = Gauge("provisioner_tenants", "Tenants by status, as of the last reconcile", ["status"])
RECONCILE_ACTIONS = Counter("provisioner_reconcile_actions_total", "Changes made by the reconciler", ["kind"])
PROVISIONING_SECONDS = Histogram("provisioner_provisioning_seconds",
                                 "Payment verified (event time) until the tenant is recorded provisioned",
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
