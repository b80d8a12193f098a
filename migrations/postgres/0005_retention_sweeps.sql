-- The retention sweeper. `sweep_clock` holds the last run (slot = time / interval) a replica
-- claimed: a replica acts only if it moves the slot forward, so exactly one acts per run
-- however many run (an advisory lock alone would only keep two runs from overlapping, not a
-- second replica from repeating a finished run). A deployment-wide row, like
-- `cache_fence_clock`. `retention_sweeps` holds, per tenant, how far consent expiries have
-- been announced (expiry time, then revision) and when the tenant was last swept.
CREATE TABLE sweep_clock (
    id          BIGINT      PRIMARY KEY CHECK (id = 1),
    slot        BIGINT      NOT NULL,
    claimed_at  TIMESTAMPTZ NOT NULL
);
INSERT INTO sweep_clock (id, slot, claimed_at) VALUES (1, 0, 'epoch');

CREATE TABLE retention_sweeps (
    tenant_id         TEXT        NOT NULL PRIMARY KEY,
    expired_until     TIMESTAMPTZ NOT NULL,
    expired_revision  BIGINT      NOT NULL,
    swept_at          TIMESTAMPTZ NOT NULL
);

-- Grants whose validity ends, in expiry order, for the sweeper.
CREATE INDEX consent_events_by_expiry ON consent_events (tenant_id, expires_at, revision)
    WHERE expires_at IS NOT NULL;
