CREATE INDEX events_timestamp_brin ON events USING brin ("timestamp") WITH (pages_per_range = 32);
COMMENT ON INDEX events_timestamp_brin IS 'Time-range scans of raw events (retention, ad-hoc SQL); BRIN because rows arrive nearly in time order.';
DROP INDEX events_timestamp;
