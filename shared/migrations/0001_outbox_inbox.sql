-- Transactional outbox: written in the same transaction as the state change, published by the relay.
CREATE TABLE outbox (
    id            uuid PRIMARY KEY,
    routing_key   text NOT NULL,
    body          jsonb NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX outbox_pending ON outbox (created_at) WHERE published_at IS NULL;

-- Idempotent consumer: one row per handled message, written with the handler's effects.
CREATE TABLE inbox (
    message_id    uuid NOT NULL,
    consumer      text NOT NULL,
    handled_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (message_id, consumer)
);
