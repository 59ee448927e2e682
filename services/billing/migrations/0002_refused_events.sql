-- Stripe events refused because they would tie a tenant to another Stripe customer than the one
-- it has (a takeover attempt, or a mistake): kept for an operator. The event itself stays in
-- stripe_events, processed, having changed nothing.
CREATE TABLE refused_events (
    event_id          text PRIMARY KEY REFERENCES stripe_events (id),
    type              text NOT NULL,
    tenant_id         uuid NOT NULL,
    account_customer  text NOT NULL,
    event_customer    text,
    subscription_id   text,
    reason            text NOT NULL,
    refused_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX refused_events_tenant ON refused_events (tenant_id, refused_at);
CREATE INDEX refused_events_time ON refused_events (refused_at);
