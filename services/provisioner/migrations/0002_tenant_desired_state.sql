-- What the tenant should have (present while subscribed, absent after cancel), apart from how far
-- the cluster has got (status), so a failed delete is retried as a delete, never as a create.
ALTER TABLE tenants ADD COLUMN desired text NOT NULL DEFAULT 'present' CHECK (desired IN ('present', 'absent'));
ALTER TABLE tenants ADD COLUMN attempts integer NOT NULL DEFAULT 0;
-- occurred_at of the cancel (billing's clock): a payment that happened before it is stale.
ALTER TABLE tenants ADD COLUMN canceled_at timestamptz;
CREATE INDEX tenants_desired ON tenants (desired, status);
