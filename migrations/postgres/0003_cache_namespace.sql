-- The cache namespace of this ledger: a random id every shared-cache key includes, so two
-- ledgers sharing one Redis never read each other's entries, and a ledger restored from a
-- backup (whose revisions go back in time) never reads entries cached before the restore
-- once `consentd cache rotate-namespace` has given it a new one. A deployment-wide row,
-- like `cache_fence_clock`: a tenant-distributed deployment keeps it as a reference table.
CREATE TABLE ledger_identity (
    id               BIGINT PRIMARY KEY CHECK (id = 1),
    cache_namespace  TEXT   NOT NULL CHECK (cache_namespace <> '')
);
INSERT INTO ledger_identity (id, cache_namespace) VALUES (1, gen_random_uuid()::text);
