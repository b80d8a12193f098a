-- When the retention sweeper first reported an item as due (in a RETENTION_SWEEP summary's
-- items_became_due): each item is counted once, however it became due (its period ending,
-- a shorter rule, a registration of an item already past its period, a hold released).
ALTER TABLE data_items ADD COLUMN due_reported_at TIMESTAMPTZ;
