-- Back to one rollup table per source. Counts, pending deltas and the
-- per-type user sets are carried back; per-page and per-product user sets
-- had no table before and are dropped.

CREATE TABLE rollup_type_counts (
    resolution integer NOT NULL,
    bucket timestamptz NOT NULL,
    event_type_id smallint NOT NULL REFERENCES event_types (event_type_id),
    events bigint NOT NULL,
    PRIMARY KEY (resolution, bucket, event_type_id),
    CONSTRAINT rollup_type_counts_resolution CHECK (resolution IN (60, 3600, 86400))
) WITH (fillfactor = 70);
COMMENT ON TABLE rollup_type_counts IS 'Events per bucket and event type (rollup of events).';
COMMENT ON COLUMN rollup_type_counts.resolution IS 'Bucket width in seconds: 60, 3600 or 86400.';
COMMENT ON COLUMN rollup_type_counts.bucket IS 'Start of the bucket, aligned to the resolution in UTC.';
COMMENT ON COLUMN rollup_type_counts.event_type_id IS 'The event type.';
COMMENT ON COLUMN rollup_type_counts.events IS 'Number of events.';

CREATE TABLE rollup_page_counts (
    resolution integer NOT NULL,
    bucket timestamptz NOT NULL,
    page_url text NOT NULL,
    pageviews bigint NOT NULL,
    PRIMARY KEY (resolution, bucket, page_url),
    CONSTRAINT rollup_page_counts_resolution CHECK (resolution IN (60, 3600, 86400))
) WITH (fillfactor = 70);
COMMENT ON TABLE rollup_page_counts IS 'Pageviews per bucket and page (rollup of pageviews).';
COMMENT ON COLUMN rollup_page_counts.resolution IS 'Bucket width in seconds: 60, 3600 or 86400.';
COMMENT ON COLUMN rollup_page_counts.bucket IS 'Start of the bucket, aligned to the resolution in UTC.';
COMMENT ON COLUMN rollup_page_counts.page_url IS 'The page.';
COMMENT ON COLUMN rollup_page_counts.pageviews IS 'Number of pageview events.';

CREATE TABLE rollup_product_counts (
    resolution integer NOT NULL,
    bucket timestamptz NOT NULL,
    product_id text NOT NULL,
    purchases bigint NOT NULL,
    quantity bigint NOT NULL,
    revenue numeric(30, 4) NOT NULL,
    PRIMARY KEY (resolution, bucket, product_id),
    CONSTRAINT rollup_product_counts_resolution CHECK (resolution IN (60, 3600, 86400))
) WITH (fillfactor = 70);
COMMENT ON TABLE rollup_product_counts IS 'Purchases, quantity and revenue per bucket and product (rollup of purchases).';
COMMENT ON COLUMN rollup_product_counts.resolution IS 'Bucket width in seconds: 60, 3600 or 86400.';
COMMENT ON COLUMN rollup_product_counts.bucket IS 'Start of the bucket, aligned to the resolution in UTC.';
COMMENT ON COLUMN rollup_product_counts.product_id IS 'The product.';
COMMENT ON COLUMN rollup_product_counts.purchases IS 'Number of purchase events.';
COMMENT ON COLUMN rollup_product_counts.quantity IS 'Sum of purchased quantities.';
COMMENT ON COLUMN rollup_product_counts.revenue IS 'Sum of purchase amounts, exact.';

CREATE TABLE rollup_user_sets (
    resolution integer NOT NULL,
    bucket timestamptz NOT NULL,
    event_type_id smallint NOT NULL,
    users bytea NOT NULL,
    cardinality bigint NOT NULL,
    PRIMARY KEY (resolution, bucket, event_type_id),
    CONSTRAINT rollup_user_sets_resolution CHECK (resolution IN (60, 3600, 86400))
) WITH (fillfactor = 70);
COMMENT ON TABLE rollup_user_sets IS 'The exact set of users active per bucket and event type, as a serialized Roaring bitmap of users.user_id; unions give exact unique users over any range.';
COMMENT ON COLUMN rollup_user_sets.resolution IS 'Bucket width in seconds: 60, 3600 or 86400.';
COMMENT ON COLUMN rollup_user_sets.bucket IS 'Start of the bucket, aligned to the resolution in UTC.';
COMMENT ON COLUMN rollup_user_sets.event_type_id IS 'The event type, or 0 for events of any type.';
COMMENT ON COLUMN rollup_user_sets.users IS 'RoaringTreemap (portable serialization) of users.user_id.';
COMMENT ON COLUMN rollup_user_sets.cardinality IS 'Number of users in the set.';

CREATE TABLE rollup_type_deltas (
    minute timestamptz NOT NULL,
    event_type_id smallint NOT NULL,
    events bigint NOT NULL
);
COMMENT ON TABLE rollup_type_deltas IS 'Events counted by ingest and not yet folded into rollup_type_counts.';
COMMENT ON COLUMN rollup_type_deltas.minute IS 'Minute bucket (UTC) of the events.';
COMMENT ON COLUMN rollup_type_deltas.event_type_id IS 'The event type.';
COMMENT ON COLUMN rollup_type_deltas.events IS 'Number of new events of one ingest batch.';

CREATE TABLE rollup_page_deltas (
    minute timestamptz NOT NULL,
    page_url text NOT NULL,
    pageviews bigint NOT NULL
);
COMMENT ON TABLE rollup_page_deltas IS 'Pageviews counted by ingest and not yet folded into rollup_page_counts.';
COMMENT ON COLUMN rollup_page_deltas.minute IS 'Minute bucket (UTC) of the pageviews.';
COMMENT ON COLUMN rollup_page_deltas.page_url IS 'The page.';
COMMENT ON COLUMN rollup_page_deltas.pageviews IS 'Number of new pageviews of one ingest batch.';

CREATE TABLE rollup_product_deltas (
    minute timestamptz NOT NULL,
    product_id text NOT NULL,
    purchases bigint NOT NULL,
    quantity bigint NOT NULL,
    revenue numeric(30, 4) NOT NULL
);
COMMENT ON TABLE rollup_product_deltas IS 'Purchases counted by ingest and not yet folded into rollup_product_counts.';
COMMENT ON COLUMN rollup_product_deltas.minute IS 'Minute bucket (UTC) of the purchases.';
COMMENT ON COLUMN rollup_product_deltas.product_id IS 'The product.';
COMMENT ON COLUMN rollup_product_deltas.purchases IS 'Number of new purchases of one ingest batch.';
COMMENT ON COLUMN rollup_product_deltas.quantity IS 'Their summed quantity.';
COMMENT ON COLUMN rollup_product_deltas.revenue IS 'Their summed amount, exact.';

CREATE TABLE rollup_user_deltas (
    minute timestamptz NOT NULL,
    event_type_id smallint NOT NULL,
    user_id bigint NOT NULL
);
COMMENT ON TABLE rollup_user_deltas IS 'Users active in a minute, recorded by ingest and not yet folded into rollup_user_sets.';
COMMENT ON COLUMN rollup_user_deltas.minute IS 'Minute bucket (UTC) of the event.';
COMMENT ON COLUMN rollup_user_deltas.event_type_id IS 'The event type.';
COMMENT ON COLUMN rollup_user_deltas.user_id IS 'The user (users.user_id).';

ALTER TABLE rollup_type_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE rollup_page_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE rollup_product_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE rollup_user_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0);

INSERT INTO rollup_type_counts (resolution, bucket, event_type_id, events)
SELECT resolution, bucket, event_type_id, events FROM rollup_counts WHERE dimension = 0 AND events > 0;
INSERT INTO rollup_page_counts (resolution, bucket, page_url, pageviews)
SELECT r.resolution, r.bucket, v.value, r.events
FROM rollup_counts r JOIN dimension_values v USING (value_id) WHERE r.dimension = 1;
INSERT INTO rollup_product_counts (resolution, bucket, product_id, purchases, quantity, revenue)
SELECT r.resolution, r.bucket, v.value, r.events, r.quantity, r.revenue
FROM rollup_counts r JOIN dimension_values v USING (value_id) WHERE r.dimension = 2;
INSERT INTO rollup_user_sets (resolution, bucket, event_type_id, users, cardinality)
SELECT resolution, bucket, event_type_id, users, cardinality FROM rollup_sets WHERE dimension = 0;

INSERT INTO rollup_type_deltas (minute, event_type_id, events)
SELECT minute, event_type_id, events FROM rollup_count_deltas WHERE dimension = 0 AND events > 0;
INSERT INTO rollup_page_deltas (minute, page_url, pageviews)
SELECT d.minute, v.value, d.events FROM rollup_count_deltas d JOIN dimension_values v USING (value_id) WHERE d.dimension = 1;
INSERT INTO rollup_product_deltas (minute, product_id, purchases, quantity, revenue)
SELECT d.minute, v.value, d.events, d.quantity, d.revenue
FROM rollup_count_deltas d JOIN dimension_values v USING (value_id) WHERE d.dimension = 2;
INSERT INTO rollup_user_deltas (minute, event_type_id, user_id)
SELECT minute, event_type_id, user_id FROM rollup_set_deltas WHERE dimension = 0;

UPDATE rollup_state SET fold_generation = fold_generation + 1;

DROP TABLE rollup_folds;
DROP TABLE rollup_set_deltas;
DROP TABLE rollup_count_deltas;
DROP TABLE rollup_sets;
DROP TABLE rollup_counts;
DROP TABLE dimension_values;
