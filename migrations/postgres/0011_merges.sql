-- Merged subjects (IdentityService.LinkIdentity with merge or carry_choices): one row per
-- subject merged away, naming the subject that now answers for it (the root of its group:
-- when a root is merged in turn, its members' rows move to the new root). A subject with a
-- row is closed: every write naming it is refused inside the write's transaction, looked up
-- only while tenants.merges is not zero, so tenants that never merged pay nothing. An
-- erasure deletes the rows naming the erased subject on either side.
ALTER TABLE tenants ADD COLUMN merges BIGINT NOT NULL DEFAULT 0;

CREATE TABLE merged_subjects (
    tenant_id    TEXT   NOT NULL,
    subject_id   TEXT   NOT NULL,
    merged_into  TEXT   NOT NULL,
    revision     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, subject_id)
);
CREATE INDEX merged_subjects_by_root ON merged_subjects (tenant_id, merged_into);
