-- Erasure (GDPR Art. 17) and the keyed chain: see the PostgreSQL migration for the model.
ALTER TABLE tenants ADD COLUMN subject_key BLOB CHECK (subject_key IS NULL OR length(subject_key) = 32);
ALTER TABLE tenants ADD COLUMN keyed_from INTEGER CHECK (keyed_from IS NULL OR keyed_from > 0);
ALTER TABLE tenants ADD COLUMN erasures INTEGER NOT NULL DEFAULT 0;

ALTER TABLE data_items ADD COLUMN erased_at INTEGER;

-- The append-only guards also allow what an erasure does, and nothing more: the payload set
-- to NULL and a clear subject id replaced by `erased:` and 64 lowercase hex digits.
DROP TRIGGER consent_events_update_only_erases;
CREATE TRIGGER consent_events_update_only_erases
BEFORE UPDATE ON consent_events
WHEN NOT (NEW.evidence IS NULL
    AND NEW.tenant_id IS OLD.tenant_id AND NEW.revision IS OLD.revision
    AND NEW.event_id IS OLD.event_id
    AND (NEW.subject_id IS OLD.subject_id
         OR (substr(OLD.subject_id, 1, 7) <> 'erased:' AND substr(NEW.subject_id, 1, 7) = 'erased:'
             AND length(NEW.subject_id) = 71 AND substr(NEW.subject_id, 8) NOT GLOB '*[^0-9a-f]*'))
    AND NEW.purpose_id IS OLD.purpose_id AND NEW.vendor_id IS OLD.vendor_id
    AND NEW.decision IS OLD.decision AND NEW.policy_version_id IS OLD.policy_version_id
    AND NEW.channel IS OLD.channel AND NEW.collected_at IS OLD.collected_at
    AND NEW.recorded_at IS OLD.recorded_at AND NEW.expires_at IS OLD.expires_at
    AND NEW.evidence_sha256 IS OLD.evidence_sha256 AND NEW.actor_key_id IS OLD.actor_key_id
    AND NEW.prev_hash IS OLD.prev_hash AND NEW.hash IS OLD.hash)
BEGIN
    SELECT RAISE(ABORT, 'consent_events is append-only: UPDATE refused (only erasing the evidence, SET evidence = NULL, and erasing a subject id to erased:<digest> are allowed)');
END;

DROP TRIGGER ledger_records_update_only_erases;
CREATE TRIGGER ledger_records_update_only_erases
BEFORE UPDATE ON ledger_records
WHEN NOT (NEW.detail IS NULL
    AND NEW.tenant_id IS OLD.tenant_id AND NEW.revision IS OLD.revision
    AND NEW.record_id IS OLD.record_id AND NEW.kind IS OLD.kind
    AND (NEW.subject_id IS OLD.subject_id
         OR (substr(OLD.subject_id, 1, 7) <> 'erased:' AND substr(NEW.subject_id, 1, 7) = 'erased:'
             AND length(NEW.subject_id) = 71 AND substr(NEW.subject_id, 8) NOT GLOB '*[^0-9a-f]*'))
    AND NEW.purpose_id IS OLD.purpose_id
    AND NEW.at IS OLD.at AND NEW.recorded_at IS OLD.recorded_at
    AND NEW.detail_sha256 IS OLD.detail_sha256 AND NEW.actor_key_id IS OLD.actor_key_id
    AND NEW.prev_hash IS OLD.prev_hash AND NEW.hash IS OLD.hash)
BEGIN
    SELECT RAISE(ABORT, 'ledger_records is append-only: UPDATE refused (only erasing the detail, SET detail = NULL, and erasing a subject id to erased:<digest> are allowed)');
END;
