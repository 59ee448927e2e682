-- A tenant's previous subscription once a plan change is paid by a new one of the same Stripe
-- customer: its later events (a renewal, its cancel) change nothing. It still bills at Stripe
-- until it is canceled there.
CREATE TABLE superseded_subscriptions (
    subscription_id  text PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES accounts (tenant_id),
    superseded_by    text NOT NULL,
    superseded_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX superseded_subscriptions_tenant ON superseded_subscriptions (tenant_id);
