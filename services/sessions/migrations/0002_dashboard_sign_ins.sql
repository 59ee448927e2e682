-- Dashboard sign-in links and the sign-ins they are exchanged for. Both secrets are random and
-- stored only as their SHA-256: a link works once, a sign-in until it expires or is ended
-- (signed out, revoked by the tenant or an operator, or the subscription canceled).
CREATE TABLE dashboard_links (
    token_hash  bytea PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX dashboard_links_by_tenant ON dashboard_links (tenant_id) WHERE used_at IS NULL;

CREATE TABLE dashboard_sign_ins (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants,
    token_hash    bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    last_used_at  timestamptz,
    ended_at      timestamptz,
    end_reason    text CHECK (end_reason IN ('signed_out', 'revoked', 'canceled'))
);
CREATE INDEX dashboard_sign_ins_live ON dashboard_sign_ins (tenant_id, created_at DESC) WHERE ended_at IS NULL;
