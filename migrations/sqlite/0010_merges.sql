-- Merged subjects: see the PostgreSQL migration (0011_merges.sql) for the model.
ALTER TABLE tenants ADD COLUMN merges INTEGER NOT NULL DEFAULT 0;

CREATE TABLE merged_subjects (
    tenant_id    TEXT    NOT NULL,
    subject_id   TEXT    NOT NULL,
    merged_into  TEXT    NOT NULL,
    revision     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, subject_id)
);
CREATE INDEX merged_subjects_by_root ON merged_subjects (tenant_id, merged_into);
