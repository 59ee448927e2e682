-- Leases warm_pool reported gone (warm_pool.browser_crashed) before their session was recorded
-- running: a context leased ahead (reservations), or a create still `starting`. Such a lease is
-- never recorded running; rows are pruned by the reaper after an hour.
CREATE TABLE crashed_leases (
    session_id uuid PRIMARY KEY,
    browser_id uuid NOT NULL,
    crashed_at timestamptz NOT NULL DEFAULT now()
);
