-- Retention: ledger records (chain entries that are not consent choices, such as deletion
-- attestations), the operator's retention defaults and the tenants' rules per data category,
-- the data items product services register, and legal holds. Every table is keyed by
-- tenant_id first (distributable by tenant like the rest of the ledger). JSON documents are
-- TEXT checked to parse as JSON: the store reads and writes them whole.

-- Ledger records share the tenant's revisions and hash chain with consent_events: a revision
-- is in exactly one of the two tables. `detail` is erasable like an event's evidence: its
-- digest stays in the chain.
CREATE TABLE ledger_records (
    tenant_id      TEXT        NOT NULL,
    revision       BIGINT      NOT NULL CHECK (revision > 0),
    record_id      TEXT        NOT NULL,
    kind           TEXT        NOT NULL,
    subject_id     TEXT        NOT NULL,
    purpose_id     TEXT        NOT NULL,
    at             TIMESTAMPTZ NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    detail         TEXT        CHECK (detail IS NULL OR (detail::jsonb) IS NOT NULL),
    detail_sha256  BYTEA       NOT NULL CHECK (length(detail_sha256) = 32),
    actor_key_id   TEXT        NOT NULL,
    prev_hash      BYTEA       NOT NULL CHECK (length(prev_hash) = 32),
    hash           BYTEA       NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tenant_id, revision)
);
CREATE UNIQUE INDEX ledger_records_by_id ON ledger_records (tenant_id, record_id);
CREATE INDEX ledger_records_by_subject ON ledger_records (tenant_id, subject_id, revision);

-- Append-only guard: no UPDATE except erasing the detail, no DELETE, no TRUNCATE.
CREATE FUNCTION ledger_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.detail IS NULL
       AND (to_jsonb(NEW) - 'detail') = (to_jsonb(OLD) - 'detail') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger_records is append-only: % refused (only erasing the detail, UPDATE ... SET detail = NULL, is allowed)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER ledger_records_append_only
    BEFORE UPDATE OR DELETE ON ledger_records
    FOR EACH ROW EXECUTE FUNCTION ledger_records_append_only();
CREATE TRIGGER ledger_records_no_truncate
    BEFORE TRUNCATE ON ledger_records
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_records_append_only();

-- The operator's default per category (`consentd catalog apply`), with its bound: a JSON
-- consent_core::retention::RetentionDefault.
CREATE TABLE retention_defaults (
    tenant_id      TEXT        NOT NULL,
    data_category  TEXT        NOT NULL,
    body           TEXT        NOT NULL CHECK ((body::jsonb) IS NOT NULL),
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, data_category)
);

-- A tenant's rules: campaign_id '' for the tenant-wide rule of a category. A JSON
-- consent_core::retention::RetentionRule.
CREATE TABLE retention_rules (
    tenant_id      TEXT        NOT NULL,
    data_category  TEXT        NOT NULL,
    campaign_id    TEXT        NOT NULL,
    body           TEXT        NOT NULL CHECK ((body::jsonb) IS NOT NULL),
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, data_category, campaign_id)
);

-- Registered data items. delete_after is kept current by the store (anchor + the period of
-- the rule that applies); NULL while an anchor other than creation is unknown.
CREATE TABLE data_items (
    tenant_id             TEXT        NOT NULL,
    item_id               TEXT        NOT NULL,
    subject_id            TEXT        NOT NULL,
    data_category         TEXT        NOT NULL,
    campaign_id           TEXT        NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL,
    anchor_at             TIMESTAMPTZ,
    delete_after          TIMESTAMPTZ,
    deleted_at            TIMESTAMPTZ,
    attestation_revision  BIGINT,
    registered_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, item_id)
);
CREATE INDEX data_items_due ON data_items (tenant_id, delete_after, item_id) WHERE deleted_at IS NULL;
CREATE INDEX data_items_by_subject ON data_items (tenant_id, subject_id);
CREATE INDEX data_items_by_rule ON data_items (tenant_id, data_category, campaign_id);

CREATE TABLE legal_holds (
    tenant_id     TEXT        NOT NULL,
    hold_id       TEXT        NOT NULL,
    scope         TEXT        NOT NULL CHECK (scope IN ('subject', 'item', 'campaign')),
    scope_id      TEXT        NOT NULL,
    reason        TEXT        NOT NULL,
    until         TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL,
    released_at   TIMESTAMPTZ,
    actor_key_id  TEXT        NOT NULL,
    PRIMARY KEY (tenant_id, hold_id)
);
CREATE INDEX legal_holds_in_force ON legal_holds (tenant_id, scope, scope_id) WHERE released_at IS NULL;
