-- The rights a subject exercised that override consent (restriction, objections, GPC):
-- a JSON consent_core::SubjectFlags, projected from the subject's ledger records (kinds
-- processing_restricted, restriction_lifted, objected, objection_withdrawn, gpc_set,
-- gpc_cleared) in the same transaction, like consent_state from consent_events.
CREATE TABLE subject_flags (
    tenant_id   TEXT    NOT NULL,
    subject_id  TEXT    NOT NULL,
    body        TEXT    NOT NULL CHECK ((body::jsonb) IS NOT NULL),
    revision    BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, subject_id)
);
