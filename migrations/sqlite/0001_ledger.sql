-- The consent ledger (SQLite). Rewritten before the first release: this file replaces the
-- earlier schema and its follow-up migrations. SQLite has no time or UUID types: times are
-- INTEGER microseconds since the Unix epoch (UTC), ids TEXT; hashes are raw 32-byte digests.
-- The layout follows the PostgreSQL schema (migrations/postgres), keyed by tenant_id first.

-- One row per tenant: the head of its ledger (revision, hash) and its catalogue version.
CREATE TABLE tenants (
    tenant_id        TEXT    NOT NULL PRIMARY KEY,
    revision         INTEGER NOT NULL CHECK (revision >= 0),
    head_hash        BLOB    NOT NULL CHECK (length(head_hash) = 32),
    catalog_version  INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL
);

-- Catalogue entries are small JSON documents (consent_core's types) keyed by id.
CREATE TABLE purposes (
    tenant_id   TEXT    NOT NULL,
    purpose_id  TEXT    NOT NULL,
    body        TEXT    NOT NULL CHECK (json_valid(body)),
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, purpose_id)
);

CREATE TABLE vendors (
    tenant_id   TEXT    NOT NULL,
    vendor_id   TEXT    NOT NULL,
    body        TEXT    NOT NULL CHECK (json_valid(body)),
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, vendor_id)
);

CREATE TABLE policy_versions (
    tenant_id          TEXT    NOT NULL,
    policy_version_id  TEXT    NOT NULL,
    published_at       INTEGER NOT NULL,
    body               TEXT    NOT NULL CHECK (json_valid(body)),
    PRIMARY KEY (tenant_id, policy_version_id)
);

-- The append-only ledger. `evidence` is the erasable personal data (JSON); its digest stays
-- in the chain, so erasing it (setting it to NULL) is the only change the guard allows.
CREATE TABLE consent_events (
    tenant_id          TEXT    NOT NULL,
    revision           INTEGER NOT NULL CHECK (revision > 0),
    event_id           TEXT    NOT NULL,
    subject_id         TEXT    NOT NULL,
    purpose_id         TEXT    NOT NULL,
    vendor_id          TEXT    NOT NULL,
    decision           TEXT    NOT NULL CHECK (decision IN ('granted', 'denied', 'withdrawn')),
    policy_version_id  TEXT    NOT NULL,
    channel            TEXT    NOT NULL CHECK (channel IN ('web', 'mobile', 'voice', 'api', 'import', 'admin')),
    collected_at       INTEGER NOT NULL,
    recorded_at        INTEGER NOT NULL,
    expires_at         INTEGER,
    evidence           TEXT    CHECK (evidence IS NULL OR json_valid(evidence)),
    evidence_sha256    BLOB    NOT NULL CHECK (length(evidence_sha256) = 32),
    actor_key_id       TEXT    NOT NULL,
    prev_hash          BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash               BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tenant_id, revision)
) WITHOUT ROWID;
CREATE UNIQUE INDEX consent_events_by_id ON consent_events (tenant_id, event_id);
CREATE INDEX consent_events_by_subject ON consent_events (tenant_id, subject_id, revision);
CREATE INDEX consent_events_by_purpose ON consent_events (tenant_id, purpose_id, revision);

-- Append-only guard: no UPDATE except erasing the evidence, no DELETE.
CREATE TRIGGER consent_events_update_only_erases
BEFORE UPDATE ON consent_events
WHEN NOT (NEW.evidence IS NULL
    AND NEW.tenant_id IS OLD.tenant_id AND NEW.revision IS OLD.revision
    AND NEW.event_id IS OLD.event_id AND NEW.subject_id IS OLD.subject_id
    AND NEW.purpose_id IS OLD.purpose_id AND NEW.vendor_id IS OLD.vendor_id
    AND NEW.decision IS OLD.decision AND NEW.policy_version_id IS OLD.policy_version_id
    AND NEW.channel IS OLD.channel AND NEW.collected_at IS OLD.collected_at
    AND NEW.recorded_at IS OLD.recorded_at AND NEW.expires_at IS OLD.expires_at
    AND NEW.evidence_sha256 IS OLD.evidence_sha256 AND NEW.actor_key_id IS OLD.actor_key_id
    AND NEW.prev_hash IS OLD.prev_hash AND NEW.hash IS OLD.hash)
BEGIN
    SELECT RAISE(ABORT, 'consent_events is append-only: UPDATE refused (only erasing the evidence, SET evidence = NULL, is allowed)');
END;
CREATE TRIGGER consent_events_no_delete
BEFORE DELETE ON consent_events
BEGIN
    SELECT RAISE(ABORT, 'consent_events is append-only: DELETE refused');
END;

-- Projection: per subject, purpose and vendor, the choice that supersedes the others.
CREATE TABLE consent_state (
    tenant_id          TEXT    NOT NULL,
    subject_id         TEXT    NOT NULL,
    purpose_id         TEXT    NOT NULL,
    vendor_id          TEXT    NOT NULL,
    decision           TEXT    NOT NULL CHECK (decision IN ('granted', 'denied', 'withdrawn')),
    event_id           TEXT    NOT NULL,
    policy_version_id  TEXT    NOT NULL,
    collected_at       INTEGER NOT NULL,
    revision           INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, subject_id, purpose_id, vendor_id)
) WITHOUT ROWID;

-- Idempotency keys: the revisions a keyed write produced and the request's fingerprint.
-- A key older than store.idempotency_ttl_secs no longer replays and is purged.
CREATE TABLE idempotency_keys (
    tenant_id        TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    fingerprint      BLOB    NOT NULL CHECK (length(fingerprint) = 32),
    first_revision   INTEGER NOT NULL,
    last_revision    INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- Cache fences (see the PostgreSQL schema): sequence order is commit order (one writer).
CREATE TABLE cache_fence_clock (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL
);
INSERT INTO cache_fence_clock (id, seq) VALUES (1, 0);

CREATE TABLE cache_fences (
    tenant_id        TEXT    NOT NULL PRIMARY KEY,
    revision         INTEGER NOT NULL,
    catalog_version  INTEGER NOT NULL,
    seq              INTEGER NOT NULL
);
CREATE INDEX cache_fences_by_seq ON cache_fences (seq);
