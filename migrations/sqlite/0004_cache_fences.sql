-- Cache fences: per tenant, the ledger revision below which cached subject states are stale
-- (written when a write could not reach the shared cache) and the catalogue version below
-- which cached catalogues are stale (written by every catalogue write). Replicas poll the
-- rows changed after the last sequence number they saw; the sequence comes from the single
-- clock row, whose row lock is held to commit, so sequence order is commit order.
CREATE TABLE cache_fence_clock (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO cache_fence_clock (id, seq) VALUES (1, 0);

CREATE TABLE cache_fences (
    tenant_id TEXT PRIMARY KEY,
    revision BIGINT NOT NULL,
    catalog_version BIGINT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX cache_fences_by_seq ON cache_fences (seq);
