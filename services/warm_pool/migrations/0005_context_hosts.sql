-- Context sessions (isolation "context"): a browser of mode 'context' hosts BrowserContexts of one
-- tenant's sessions; while ready it is 'hosting', whatever number of contexts it holds.
ALTER TABLE browsers DROP CONSTRAINT browsers_state_check;
ALTER TABLE browsers ADD CONSTRAINT browsers_state_check
    CHECK (state IN ('launching', 'idle', 'leased', 'hosting', 'retiring', 'dead'));
ALTER TABLE browsers ADD COLUMN mode text NOT NULL DEFAULT 'browser' CHECK (mode IN ('browser', 'context'));
ALTER TABLE browsers ADD COLUMN contexts_served integer NOT NULL DEFAULT 0;
ALTER TABLE browsers ADD COLUMN active_contexts integer NOT NULL DEFAULT 0 CHECK (active_contexts >= 0);
-- Takes no new context (recycled once its last one ends): its memory grew past the limit, or it failed.
ALTER TABLE browsers ADD COLUMN recycle boolean NOT NULL DEFAULT false;
CREATE INDEX browsers_hosting ON browsers (tenant_id, replica_id) WHERE state = 'hosting';

-- One row per context lease: creating → active → ending → ended (or failed / crashed).
CREATE TABLE contexts (
    session_id      uuid PRIMARY KEY,
    browser_id      uuid NOT NULL REFERENCES browsers (id) ON DELETE CASCADE,
    tenant_id       uuid NOT NULL REFERENCES tenants (tenant_id),
    state           text NOT NULL CHECK (state IN ('creating', 'active', 'ending', 'ended', 'failed', 'crashed')),
    warm            boolean NOT NULL,
    context_id      text,
    downloads_path  text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    confirmed_at    timestamptz,
    ended_at        timestamptz
);
CREATE INDEX contexts_live ON contexts (browser_id) WHERE state IN ('creating', 'active', 'ending');
CREATE INDEX contexts_created ON contexts (tenant_id, created_at);
