CREATE TABLE tenants (
    tenant_id       uuid PRIMARY KEY,
    plan            text NOT NULL,
    prewarm         integer NOT NULL CHECK (prewarm >= 0),
    max_concurrent  integer NOT NULL CHECK (max_concurrent >= 0),
    status          text NOT NULL CHECK (status IN ('active', 'draining')),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per browser ever started; a browser serves at most one session, then dies.
CREATE TABLE browsers (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (tenant_id),
    replica_id    text NOT NULL,
    owner_pid     integer NOT NULL,
    host          text NOT NULL,
    state         text NOT NULL CHECK (state IN ('launching', 'idle', 'leased', 'retiring', 'dead')),
    warm          boolean,
    pid           integer,
    port          integer,
    profile_dir   text,
    cdp_ws_url    text,
    session_id    uuid UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    ready_at      timestamptz,
    leased_at     timestamptz,
    confirmed_at  timestamptz,
    ended_at      timestamptz
);
CREATE INDEX browsers_idle ON browsers (tenant_id, created_at) WHERE state = 'idle';
CREATE INDEX browsers_live ON browsers (replica_id, state) WHERE state <> 'dead';
CREATE INDEX browsers_leased_at ON browsers (tenant_id, leased_at);
