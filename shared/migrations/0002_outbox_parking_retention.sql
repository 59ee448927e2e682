-- A row the broker returns unroutable is retried on its own schedule (retry_at) without holding
-- up the rows behind it, and parked after OUTBOX_PARK_AFTER_RETURNS returns until an operator
-- replays or discards it. Sent rows and inbox rows are deleted after their retention.
ALTER TABLE outbox
    ADD COLUMN state     text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'parked')),
    ADD COLUMN returned  integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_at  timestamptz,
    ADD COLUMN parked_at timestamptz;
UPDATE outbox SET state = 'sent' WHERE published_at IS NOT NULL;
DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (created_at) WHERE state = 'pending';
CREATE INDEX outbox_sent ON outbox (published_at) WHERE state = 'sent';
CREATE INDEX outbox_parked ON outbox (created_at) WHERE state = 'parked';
CREATE INDEX inbox_handled ON inbox (handled_at);
