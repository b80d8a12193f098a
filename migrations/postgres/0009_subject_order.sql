-- Snapshots (ConsentService.ExportSnapshot) page through the ledger in subject order, with
-- row-value keysets over the (tenant_id, subject_id, revision) indexes, and merge events with
-- records in Rust, which compares ids byte for byte (as the API defines them). Make the
-- columns order bytewise whatever the database's default collation is (en_US would sort
-- "a-b" after "ab"). Equality is unchanged: deterministic collations compare equal only
-- when the bytes are equal. The indexes on the columns are rebuilt; the rows are not.
ALTER TABLE consent_events ALTER COLUMN subject_id TYPE TEXT COLLATE "C";
ALTER TABLE ledger_records ALTER COLUMN subject_id TYPE TEXT COLLATE "C";
