-- The consent ledger (PostgreSQL, native types). Rewritten before the first release: this
-- file replaces the earlier BIGINT/TEXT schema and its follow-up migrations.
--
-- Every table is keyed by tenant_id first and no sequence spans tenants (revisions are
-- per tenant), so the ledger tables can be distributed by tenant_id unchanged
-- (docs/performance.md). The one exception, `cache_fence_clock`, is small and rarely written.
-- Times are timestamptz (microsecond precision, like the service's own times); hashes are
-- raw 32-byte SHA-256 digests.

-- One row per tenant: the head of its ledger (revision, hash) and its catalogue version.
-- Its row lock serialises the tenant's writers; each group commit takes it once.
CREATE TABLE tenants (
    tenant_id        TEXT        NOT NULL PRIMARY KEY,
    revision         BIGINT      NOT NULL CHECK (revision >= 0),
    head_hash        BYTEA       NOT NULL CHECK (length(head_hash) = 32),
    catalog_version  BIGINT      NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL
);

-- Catalogue entries are small JSON documents (consent_core's types) keyed by id.
CREATE TABLE purposes (
    tenant_id   TEXT        NOT NULL,
    purpose_id  TEXT        NOT NULL,
    body        JSONB       NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, purpose_id)
);

CREATE TABLE vendors (
    tenant_id   TEXT        NOT NULL,
    vendor_id   TEXT        NOT NULL,
    body        JSONB       NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, vendor_id)
);

CREATE TABLE policy_versions (
    tenant_id          TEXT        NOT NULL,
    policy_version_id  TEXT        NOT NULL,
    published_at       TIMESTAMPTZ NOT NULL,
    body               JSONB       NOT NULL,
    PRIMARY KEY (tenant_id, policy_version_id)
);

-- The append-only ledger. `evidence` is the erasable personal data; its digest stays in
-- the chain, so erasing it (setting it to NULL) is the only change the guard below allows.
CREATE TABLE consent_events (
    tenant_id          TEXT        NOT NULL,
    revision           BIGINT      NOT NULL CHECK (revision > 0),
    event_id           UUID        NOT NULL,
    subject_id         TEXT        NOT NULL,
    -- Empty for a subject-wide withdrawal (it bears on every purpose).
    purpose_id         TEXT        NOT NULL,
    -- Empty for a choice about the purpose itself rather than one vendor.
    vendor_id          TEXT        NOT NULL,
    decision           TEXT        NOT NULL CHECK (decision IN ('granted', 'denied', 'withdrawn')),
    policy_version_id  TEXT        NOT NULL,
    channel            TEXT        NOT NULL CHECK (channel IN ('web', 'mobile', 'voice', 'api', 'import', 'admin')),
    collected_at       TIMESTAMPTZ NOT NULL,
    recorded_at        TIMESTAMPTZ NOT NULL,
    expires_at         TIMESTAMPTZ,
    evidence           JSONB,
    evidence_sha256    BYTEA       NOT NULL CHECK (length(evidence_sha256) = 32),
    actor_key_id       TEXT        NOT NULL,
    prev_hash          BYTEA       NOT NULL CHECK (length(prev_hash) = 32),
    hash               BYTEA       NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tenant_id, revision)
);
CREATE UNIQUE INDEX consent_events_by_id ON consent_events (tenant_id, event_id);
-- A subject's history, ListEvents and Watch by subject.
CREATE INDEX consent_events_by_subject ON consent_events (tenant_id, subject_id, revision);
-- ListEvents and Watch by purpose.
CREATE INDEX consent_events_by_purpose ON consent_events (tenant_id, purpose_id, revision);

-- Append-only guard: no UPDATE except erasing the evidence, no DELETE, no TRUNCATE.
CREATE FUNCTION consent_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.evidence IS NULL
       AND (to_jsonb(NEW) - 'evidence') = (to_jsonb(OLD) - 'evidence') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'consent_events is append-only: % refused (only erasing the evidence, UPDATE ... SET evidence = NULL, is allowed)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER consent_events_append_only
    BEFORE UPDATE OR DELETE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION consent_events_append_only();
CREATE TRIGGER consent_events_no_truncate
    BEFORE TRUNCATE ON consent_events
    FOR EACH STATEMENT EXECUTE FUNCTION consent_events_append_only();

-- Projection: per subject, purpose and vendor, the choice that supersedes the others (latest
-- collected; at the same time the more restrictive; then the later written).
CREATE TABLE consent_state (
    tenant_id          TEXT        NOT NULL,
    subject_id         TEXT        NOT NULL,
    purpose_id         TEXT        NOT NULL,
    vendor_id          TEXT        NOT NULL,
    decision           TEXT        NOT NULL CHECK (decision IN ('granted', 'denied', 'withdrawn')),
    event_id           UUID        NOT NULL,
    policy_version_id  TEXT        NOT NULL,
    collected_at       TIMESTAMPTZ NOT NULL,
    revision           BIGINT      NOT NULL,
    PRIMARY KEY (tenant_id, subject_id, purpose_id, vendor_id)
);

-- Idempotency keys: the revisions a keyed write produced and the request's fingerprint.
-- A key older than the configured lifetime (store.idempotency_ttl_secs) no longer replays
-- and is purged in the background.
CREATE TABLE idempotency_keys (
    tenant_id        TEXT        NOT NULL,
    idempotency_key  TEXT        NOT NULL,
    fingerprint      BYTEA       NOT NULL CHECK (length(fingerprint) = 32),
    first_revision   BIGINT      NOT NULL,
    last_revision    BIGINT      NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- Cache fences: per tenant, the ledger revision below which cached subject states are stale
-- (written when a write could not reach the shared cache) and the catalogue version below
-- which cached catalogues are stale (written by every catalogue write). Replicas poll the
-- rows changed after the last sequence number they saw; the sequence comes from the single
-- clock row, whose row lock is held to commit, so sequence order is commit order.
CREATE TABLE cache_fence_clock (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL
);
INSERT INTO cache_fence_clock (id, seq) VALUES (1, 0);

CREATE TABLE cache_fences (
    tenant_id        TEXT   NOT NULL PRIMARY KEY,
    revision         BIGINT NOT NULL,
    catalog_version  BIGINT NOT NULL,
    seq              BIGINT NOT NULL
);
CREATE INDEX cache_fences_by_seq ON cache_fences (seq);
