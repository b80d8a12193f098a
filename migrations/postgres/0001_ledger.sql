-- The consent ledger (PostgreSQL). Every key starts with tenant_id. Times are microseconds
-- since the Unix epoch (UTC); hashes are raw 32-byte SHA-256 digests.

-- One row per tenant: the head of its ledger.
CREATE TABLE tenants (
    tenant_id   TEXT    NOT NULL PRIMARY KEY,
    revision    BIGINT  NOT NULL,
    head_hash   BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL
);

-- Catalogue entries are small documents (JSON of consent_core's types) keyed by id.
CREATE TABLE purposes (
    tenant_id   TEXT    NOT NULL,
    purpose_id  TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, purpose_id)
);

CREATE TABLE vendors (
    tenant_id   TEXT    NOT NULL,
    vendor_id   TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, vendor_id)
);

CREATE TABLE policy_versions (
    tenant_id          TEXT    NOT NULL,
    policy_version_id  TEXT    NOT NULL,
    published_at       BIGINT  NOT NULL,
    body               TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, policy_version_id)
);

-- The append-only ledger. `evidence` is the erasable personal data (JSON); its digest stays.
CREATE TABLE consent_events (
    tenant_id          TEXT    NOT NULL,
    revision           BIGINT  NOT NULL,
    event_id           TEXT    NOT NULL,
    subject_id         TEXT    NOT NULL,
    purpose_id         TEXT    NOT NULL,
    vendor_id          TEXT    NOT NULL,
    decision           TEXT    NOT NULL,
    policy_version_id  TEXT    NOT NULL,
    channel            TEXT    NOT NULL,
    collected_at       BIGINT  NOT NULL,
    recorded_at        BIGINT  NOT NULL,
    expires_at         BIGINT,
    evidence           TEXT,
    evidence_sha256    BYTEA   NOT NULL,
    actor_key_id       TEXT    NOT NULL,
    prev_hash          BYTEA   NOT NULL,
    hash               BYTEA   NOT NULL,
    PRIMARY KEY (tenant_id, revision)
);
CREATE UNIQUE INDEX consent_events_by_id ON consent_events (tenant_id, event_id);
CREATE INDEX consent_events_by_subject ON consent_events (tenant_id, subject_id, purpose_id, collected_at);

-- Projection: the latest choice (by collected_at, then revision) per subject, purpose, vendor.
CREATE TABLE consent_state (
    tenant_id          TEXT    NOT NULL,
    subject_id         TEXT    NOT NULL,
    purpose_id         TEXT    NOT NULL,
    vendor_id          TEXT    NOT NULL,
    decision           TEXT    NOT NULL,
    event_id           TEXT    NOT NULL,
    policy_version_id  TEXT    NOT NULL,
    collected_at       BIGINT  NOT NULL,
    revision           BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, subject_id, purpose_id, vendor_id)
);

-- Idempotency keys: the revisions a keyed write produced, and the request's fingerprint.
CREATE TABLE idempotency_keys (
    tenant_id        TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    fingerprint      BYTEA   NOT NULL,
    first_revision   BIGINT  NOT NULL,
    last_revision    BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);
