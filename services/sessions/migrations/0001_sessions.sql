-- Projection of tenants from billing and provisioner events.
CREATE TABLE tenants (
    tenant_id                uuid PRIMARY KEY,
    plan                     text NOT NULL,
    status                   text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'past_due', 'canceled')),
    provisioned              boolean NOT NULL DEFAULT false,
    max_concurrent_sessions  integer NOT NULL,
    max_session_seconds      integer NOT NULL,
    current_period_start     timestamptz,
    updated_at               timestamptz NOT NULL DEFAULT now()
);

-- One row per billing period; redelivering a period's grant never resets its usage.
CREATE TABLE allowances (
    tenant_id        uuid NOT NULL REFERENCES tenants,
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    credits_granted  integer NOT NULL CHECK (credits_granted >= 0),
    credits_used     integer NOT NULL DEFAULT 0 CHECK (credits_used >= 0),
    PRIMARY KEY (tenant_id, period_start)
);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants,
    key_hash      bytea NOT NULL UNIQUE,
    prefix        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

CREATE TABLE sessions (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants,
    status             text NOT NULL CHECK (status IN ('starting', 'running', 'completed', 'failed')),
    browser            text NOT NULL,
    plan               text NOT NULL,
    timeout_s          integer NOT NULL,
    idle_timeout_s     integer NOT NULL,
    keep_alive         boolean NOT NULL,
    token_hash         bytea NOT NULL,
    period_start       timestamptz NOT NULL,
    remaining_credits  integer NOT NULL,
    browser_id         uuid,
    browser_ws_url     text,
    warm               boolean,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    expires_at         timestamptz,
    last_activity_at   timestamptz,
    connections        integer NOT NULL DEFAULT 0,
    disconnected_at    timestamptz,
    ended_at           timestamptz,
    duration_ms        bigint,
    cost               numeric(12, 6),
    end_reason         text,
    failure            text
);
CREATE INDEX sessions_by_tenant ON sessions (tenant_id, created_at DESC, id DESC);
CREATE INDEX sessions_live ON sessions (status, tenant_id) WHERE status IN ('starting', 'running');
CREATE INDEX sessions_by_browser ON sessions (browser_id);

-- Idempotency-Key of POST /v1/sessions. The key is stored hashed; the CDP token of the session
-- is stored only masked with a pad derived from the key, so the row alone reveals nothing.
CREATE TABLE idempotency_keys (
    tenant_id     uuid NOT NULL,
    key_hash      bytea NOT NULL,
    request_hash  bytea NOT NULL,
    session_id    uuid NOT NULL,
    token_masked  bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key_hash)
);
