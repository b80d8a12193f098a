-- A per-tenant catalogue version, bumped by every catalogue write, so caches can tell an
-- older copy of the catalogue from a newer one.
ALTER TABLE tenants ADD COLUMN catalog_version BIGINT NOT NULL DEFAULT 0;
