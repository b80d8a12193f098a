-- Retention: ledger records (chain entries that are not consent choices, such as deletion
-- attestations), the operator's retention defaults and the tenants' rules per data category,
-- the data items product services register, and legal holds. Times are INTEGER microseconds
-- since the Unix epoch (UTC), as in 0001.

-- Ledger records share the tenant's revisions and hash chain with consent_events: a revision
-- is in exactly one of the two tables. `detail` is erasable like an event's evidence: its
-- digest stays in the chain.
CREATE TABLE ledger_records (
    tenant_id      TEXT    NOT NULL,
    revision       INTEGER NOT NULL CHECK (revision > 0),
    record_id      TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    subject_id     TEXT    NOT NULL,
    purpose_id     TEXT    NOT NULL,
    at             INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    detail         TEXT    CHECK (detail IS NULL OR json_valid(detail)),
    detail_sha256  BLOB    NOT NULL CHECK (length(detail_sha256) = 32),
    actor_key_id   TEXT    NOT NULL,
    prev_hash      BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash           BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tenant_id, revision)
) WITHOUT ROWID;
CREATE UNIQUE INDEX ledger_records_by_id ON ledger_records (tenant_id, record_id);
CREATE INDEX ledger_records_by_subject ON ledger_records (tenant_id, subject_id, revision);

-- Append-only guard: no UPDATE except erasing the detail, no DELETE.
CREATE TRIGGER ledger_records_update_only_erases
BEFORE UPDATE ON ledger_records
WHEN NOT (NEW.detail IS NULL
    AND NEW.tenant_id IS OLD.tenant_id AND NEW.revision IS OLD.revision
    AND NEW.record_id IS OLD.record_id AND NEW.kind IS OLD.kind
    AND NEW.subject_id IS OLD.subject_id AND NEW.purpose_id IS OLD.purpose_id
    AND NEW.at IS OLD.at AND NEW.recorded_at IS OLD.recorded_at
    AND NEW.detail_sha256 IS OLD.detail_sha256 AND NEW.actor_key_id IS OLD.actor_key_id
    AND NEW.prev_hash IS OLD.prev_hash AND NEW.hash IS OLD.hash)
BEGIN
    SELECT RAISE(ABORT, 'ledger_records is append-only: UPDATE refused (only erasing the detail, SET detail = NULL, is allowed)');
END;
CREATE TRIGGER ledger_records_no_delete
BEFORE DELETE ON ledger_records
BEGIN
    SELECT RAISE(ABORT, 'ledger_records is append-only: DELETE refused');
END;

-- The operator's default per category (`consentd catalog apply`), with its bound: a JSON
-- consent_core::retention::RetentionDefault.
CREATE TABLE retention_defaults (
    tenant_id      TEXT    NOT NULL,
    data_category  TEXT    NOT NULL,
    body           TEXT    NOT NULL CHECK (json_valid(body)),
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, data_category)
);

-- A tenant's rules: campaign_id '' for the tenant-wide rule of a category. A JSON
-- consent_core::retention::RetentionRule.
CREATE TABLE retention_rules (
    tenant_id      TEXT    NOT NULL,
    data_category  TEXT    NOT NULL,
    campaign_id    TEXT    NOT NULL,
    body           TEXT    NOT NULL CHECK (json_valid(body)),
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, data_category, campaign_id)
);

-- Registered data items. delete_after is kept current by the store (anchor + the period of
-- the rule that applies); NULL while an anchor other than creation is unknown.
CREATE TABLE data_items (
    tenant_id             TEXT    NOT NULL,
    item_id               TEXT    NOT NULL,
    subject_id            TEXT    NOT NULL,
    data_category         TEXT    NOT NULL,
    campaign_id           TEXT    NOT NULL,
    created_at            INTEGER NOT NULL,
    anchor_at             INTEGER,
    delete_after          INTEGER,
    deleted_at            INTEGER,
    attestation_revision  INTEGER,
    registered_at         INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, item_id)
) WITHOUT ROWID;
CREATE INDEX data_items_due ON data_items (tenant_id, delete_after, item_id) WHERE deleted_at IS NULL;
CREATE INDEX data_items_by_subject ON data_items (tenant_id, subject_id);
CREATE INDEX data_items_by_rule ON data_items (tenant_id, data_category, campaign_id);

CREATE TABLE legal_holds (
    tenant_id     TEXT    NOT NULL,
    hold_id       TEXT    NOT NULL,
    scope         TEXT    NOT NULL CHECK (scope IN ('subject', 'item', 'campaign')),
    scope_id      TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    until         INTEGER,
    created_at    INTEGER NOT NULL,
    released_at   INTEGER,
    actor_key_id  TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, hold_id)
);
CREATE INDEX legal_holds_in_force ON legal_holds (tenant_id, scope, scope_id) WHERE released_at IS NULL;
