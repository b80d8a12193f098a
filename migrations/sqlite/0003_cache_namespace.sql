-- The cache namespace of this ledger (see the PostgreSQL schema): a random id every
-- shared-cache key includes.
CREATE TABLE ledger_identity (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    cache_namespace  TEXT    NOT NULL CHECK (cache_namespace <> '')
);
INSERT INTO ledger_identity (id, cache_namespace) VALUES (1, lower(hex(randomblob(16))));
