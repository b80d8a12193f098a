-- Tenants and API keys (SQLite). Only the SHA-256 of a key's secret is stored.

CREATE TABLE tenant_accounts (
    tenant_id   TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    tenant_id      TEXT    NOT NULL REFERENCES tenant_accounts (tenant_id),
    key_id         TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    scopes         TEXT    NOT NULL,
    secret_sha256  BLOB    NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER,
    revoked_at     INTEGER,
    PRIMARY KEY (tenant_id, key_id)
);
-- Authentication finds a key by id alone (the tenant comes from the key).
CREATE UNIQUE INDEX api_keys_by_key_id ON api_keys (key_id);
