-- Erasure (GDPR Art. 17) and the keyed chain (see consent_core::chain).
--
-- subject_key: the tenant's random 32-byte key; the canonical forms of entries from
-- keyed_from on commit to HMAC-SHA256(subject_key, subject id) instead of SHA-256(subject
-- id), so an erased entry keeps a digest only the key holder can link to a guessed id. Both
-- are set by the tenant's first ledger write after this migration (ledgers written before
-- keep their earlier entries on the unkeyed form). erasures counts the tenant's erased
-- subjects, so writers skip the erased-subject lookup while it is 0.
ALTER TABLE tenants ADD COLUMN subject_key BYTEA CHECK (subject_key IS NULL OR length(subject_key) = 32);
ALTER TABLE tenants ADD COLUMN keyed_from BIGINT CHECK (keyed_from IS NULL OR keyed_from > 0);
ALTER TABLE tenants ADD COLUMN erasures BIGINT NOT NULL DEFAULT 0;

-- When the item's subject was erased (its subject_id is then the erased id).
ALTER TABLE data_items ADD COLUMN erased_at TIMESTAMPTZ;

-- The append-only guards also allow what an erasure does, and nothing more: the payload set
-- to NULL and a clear subject id replaced by `erased:` and 64 hex digits (the digest the
-- entry's hash committed to; a wrong digest fails verification).
CREATE OR REPLACE FUNCTION consent_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.evidence IS NULL
       AND (to_jsonb(NEW) - 'evidence' - 'subject_id') = (to_jsonb(OLD) - 'evidence' - 'subject_id')
       AND (NEW.subject_id = OLD.subject_id
            OR (OLD.subject_id NOT LIKE 'erased:%' AND NEW.subject_id ~ '^erased:[0-9a-f]{64}$')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'consent_events is append-only: % refused (only erasing the evidence, SET evidence = NULL, and erasing a subject id to erased:<digest> are allowed)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE OR REPLACE FUNCTION ledger_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.detail IS NULL
       AND (to_jsonb(NEW) - 'detail' - 'subject_id') = (to_jsonb(OLD) - 'detail' - 'subject_id')
       AND (NEW.subject_id = OLD.subject_id
            OR (OLD.subject_id NOT LIKE 'erased:%' AND NEW.subject_id ~ '^erased:[0-9a-f]{64}$')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger_records is append-only: % refused (only erasing the detail, SET detail = NULL, and erasing a subject id to erased:<digest> are allowed)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
