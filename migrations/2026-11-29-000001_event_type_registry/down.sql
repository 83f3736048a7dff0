ALTER TABLE event_types DROP CONSTRAINT event_types_event_type_id_positive;
ALTER TABLE event_types ALTER COLUMN event_type_id ADD GENERATED ALWAYS AS IDENTITY;
SELECT setval(pg_get_serial_sequence('event_types', 'event_type_id'),
              (SELECT coalesce(max(event_type_id), 0) + 1 FROM event_types), false);
COMMENT ON COLUMN event_types.event_type_id IS 'Surrogate key stored in events.event_type_id.';
