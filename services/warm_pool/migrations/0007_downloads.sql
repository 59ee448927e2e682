-- Files a session's browser downloaded, kept after the session ended (DOWNLOADS_ROOT/<tenant>/<session>/<name>)
-- until expires_at. A row with `dropped` set was not kept (over the session's cap, incomplete): a record only.
CREATE TABLE downloads (
    tenant_id   uuid NOT NULL,
    session_id  uuid NOT NULL,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    dropped     text CHECK (dropped IN ('over_cap', 'incomplete')),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz NOT NULL
);
CREATE UNIQUE INDEX downloads_kept ON downloads (session_id, name) WHERE dropped IS NULL;
CREATE INDEX downloads_session ON downloads (tenant_id, session_id);
CREATE INDEX downloads_expiry ON downloads (expires_at);
