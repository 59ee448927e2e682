CREATE TABLE accounts (
    tenant_id           uuid PRIMARY KEY,
    stripe_customer_id  text,
    subscription_id     text,
    plan                text NOT NULL,
    status              text NOT NULL CHECK (status IN ('active', 'past_due', 'canceled')),
    period_start        timestamptz,
    period_end          timestamptz,
    balance             integer NOT NULL DEFAULT 0,
    -- Stripe `created` of the last event that set status/plan: an older one arriving late is ignored.
    status_event_at     timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_customer ON accounts (stripe_customer_id);
CREATE INDEX accounts_subscription ON accounts (subscription_id);

-- Append-only: a replayed grant, debit or expiry hits the unique key and changes nothing.
CREATE TABLE ledger (
    id             bigserial PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES accounts (tenant_id),
    kind           text NOT NULL CHECK (kind IN ('grant', 'debit', 'expire', 'refund', 'adjustment')),
    reference      text NOT NULL,
    amount         integer NOT NULL,
    balance_after  integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (kind, reference)
);
CREATE INDEX ledger_tenant ON ledger (tenant_id, id);

CREATE TABLE stripe_events (
    id               text PRIMARY KEY,
    type             text NOT NULL,
    payload          jsonb NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    processed_at     timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_error       text
);
CREATE INDEX stripe_events_pending ON stripe_events (next_attempt_at) WHERE processed_at IS NULL;

CREATE TABLE usage (
    session_id   uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz NOT NULL,
    duration_ms  bigint NOT NULL,
    end_reason   text NOT NULL,
    cost         numeric(14, 6) NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX usage_tenant ON usage (tenant_id, ended_at);

-- Meter events waiting to reach Stripe; identifier = session id, so a resend is deduped there.
CREATE TABLE meter_reports (
    session_id       uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    value            integer NOT NULL,
    occurred_at      timestamptz NOT NULL,
    sent_at          timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_error       text
);
CREATE INDEX meter_reports_pending ON meter_reports (next_attempt_at) WHERE sent_at IS NULL;
