-- The identities (typed aliases) linked to subjects: one row per linked identity, found by
-- its alias key, HMAC-SHA256 of the normalised identity under a key derived from the
-- tenant's subject key (consent_core::identity). `value` holds the identity in clear only
-- for the opaque types (account, cookie, device, external); phone numbers and emails are
-- never stored in clear. Written with an identity_linked / identity_unlinked ledger record
-- in the same transaction; an erasure of the subject deletes its rows.
CREATE TABLE subject_identities (
    tenant_id      TEXT    NOT NULL,
    alias_key      BLOB    NOT NULL CHECK (length(alias_key) = 32),
    identity_type  TEXT    NOT NULL,
    value          TEXT,
    subject_id     TEXT    NOT NULL,
    revision       INTEGER NOT NULL,
    linked_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, alias_key)
);
CREATE INDEX subject_identities_by_subject ON subject_identities (tenant_id, subject_id);
