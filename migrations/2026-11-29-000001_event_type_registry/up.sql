-- The event-type registry can no longer be exhausted by burning ids.
--
-- event_types.event_type_id was a smallint identity: every registration
-- that lost a race or rolled back spent a sequence value, and 32,767 values
-- could be used up for good by a client sending new type names. Ids are
-- now allocated by Pulse itself (db/ingest.rs, register_types): under a
-- transaction-scoped advisory lock, the lowest free ids go to the new
-- names, so nothing is ever spent without a row, and --max-event-types caps
-- how many types exist. events.event_type_id keeps its smallint type (the
-- table holds millions of rows and is not rewritten).
ALTER TABLE event_types ALTER COLUMN event_type_id DROP IDENTITY IF EXISTS;
ALTER TABLE event_types
    ADD CONSTRAINT event_types_event_type_id_positive CHECK (event_type_id > 0);
COMMENT ON COLUMN event_types.event_type_id IS 'Surrogate key stored in events.event_type_id: 1 to 32767, the lowest free id given by Pulse under an advisory lock (0 means any type in rollup_user_sets).';
