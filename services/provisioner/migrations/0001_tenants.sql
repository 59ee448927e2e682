CREATE TABLE tenants (
    tenant_id     uuid PRIMARY KEY,
    namespace     text NOT NULL UNIQUE,
    plan          text NOT NULL,
    limits        jsonb NOT NULL,
    status        text NOT NULL CHECK (status IN ('provisioning', 'provisioned', 'deprovisioning', 'deprovisioned', 'failed')),
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
