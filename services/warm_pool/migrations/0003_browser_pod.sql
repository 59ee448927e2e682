-- A pod's "namespace/name" (kubernetes backend); profile_dir stays a local browser's directory.
ALTER TABLE browsers ADD COLUMN pod text;
-- Pruning dead rows past their retention.
CREATE INDEX browsers_dead ON browsers (ended_at) WHERE state = 'dead';
