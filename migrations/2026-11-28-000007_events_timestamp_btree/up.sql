-- GetMetrics reads the sub-minute edges of a range from raw events. Through
-- BRIN that lookup scans the whole BRIN index (~5 ms at 15M events); a
-- btree finds one minute of rows in well under a millisecond. Timestamps
-- arrive nearly in order, so inserts land on the right-most leaf and the
-- btree costs ingest little (the \copy baseline pays it too). It replaces
-- the BRIN index, which served the same range scans.
CREATE INDEX events_timestamp ON events ("timestamp");
COMMENT ON INDEX events_timestamp IS 'Time ranges of raw events: sub-minute edges of GetMetrics ranges, retention, ad-hoc SQL.';
DROP INDEX events_timestamp_brin;
