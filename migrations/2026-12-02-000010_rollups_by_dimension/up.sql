-- Rollups keyed by dimension: one table of counts and one of user sets
-- for every dimension (none, page, product; later declared properties),
-- dimension values dictionary-encoded as integers, and a log of what each
-- fold changed so that caches can keep what it did not.
--
-- Replaces rollup_type_counts, rollup_page_counts, rollup_product_counts,
-- rollup_user_sets and their four delta tables. Existing rollups and
-- pending deltas are carried over; the per-page and per-product user sets,
-- which did not exist before, are seeded as deltas from the raw events and
-- folded by the first folds (in bounded batches).
--
-- How they stay exact (ARCHITECTURE.md "Rollups"): ingest appends deltas
-- in the statement that inserts the events; a fold moves committed deltas
-- into the rollups in one transaction and logs the hours it touched under
-- a new generation; a query reads rollups + pending deltas (+ sub-minute
-- raw edges) with the generation, so every event counts exactly once.

CREATE TABLE dimension_values (
    value_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dimension smallint NOT NULL,
    value text NOT NULL,
    CONSTRAINT dimension_values_dimension_value_key UNIQUE (dimension, value),
    CONSTRAINT dimension_values_dimension CHECK (dimension > 0)
);
COMMENT ON TABLE dimension_values IS 'Dictionary of the values of each rollup dimension (page URLs, product ids), so rollup rows carry a 4-byte id instead of the string. Rows are never deleted or changed, so a cached id is always valid.';
COMMENT ON COLUMN dimension_values.value_id IS 'The id rollup rows and deltas store; unique across dimensions.';
COMMENT ON COLUMN dimension_values.dimension IS 'Which dimension: 1 page_url, 2 product_id (the codes of domain::metric::Dimension).';
COMMENT ON COLUMN dimension_values.value IS 'The value as sent by clients.';

CREATE TABLE rollup_counts (
    resolution integer NOT NULL,
    dimension smallint NOT NULL,
    bucket timestamptz NOT NULL,
    value_id integer NOT NULL,
    event_type_id smallint NOT NULL,
    events bigint NOT NULL,
    quantity bigint NOT NULL,
    revenue numeric(30, 4) NOT NULL,
    PRIMARY KEY (resolution, dimension, bucket, value_id, event_type_id),
    CONSTRAINT rollup_counts_resolution CHECK (resolution IN (60, 3600, 86400))
) WITH (fillfactor = 70);
COMMENT ON TABLE rollup_counts IS 'Events, purchased quantity and revenue per bucket, dimension value and event type (a rollup of events, pageviews and purchases). fillfactor 70: the rows of the current hour and day are updated by every fold and stay HOT.';
COMMENT ON COLUMN rollup_counts.resolution IS 'Bucket width in seconds: 60, 3600 or 86400.';
COMMENT ON COLUMN rollup_counts.dimension IS '0: every event (value_id 0); 1: pageviews by page; 2: purchases by product.';
COMMENT ON COLUMN rollup_counts.bucket IS 'Start of the bucket, aligned to the resolution in UTC.';
COMMENT ON COLUMN rollup_counts.value_id IS 'The dimension value (dimension_values.value_id); 0 for dimension 0.';
COMMENT ON COLUMN rollup_counts.event_type_id IS 'The event type (event_types.event_type_id).';
COMMENT ON COLUMN rollup_counts.events IS 'Number of events.';
COMMENT ON COLUMN rollup_counts.quantity IS 'Sum of purchased quantities (0 but for purchases).';
COMMENT ON COLUMN rollup_counts.revenue IS 'Sum of purchase amounts, exact (0 but for purchases).';
CREATE INDEX rollup_counts_value ON rollup_counts (dimension, value_id, resolution, bucket) WHERE dimension <> 0;
COMMENT ON INDEX rollup_counts_value IS 'Requests filtered on one page or product read only that value''s rows.';

CREATE TABLE rollup_sets (
    resolution integer NOT NULL,
    dimension smallint NOT NULL,
    bucket timestamptz NOT NULL,
    value_id integer NOT NULL,
    event_type_id smallint NOT NULL,
    users bytea NOT NULL,
    cardinality bigint NOT NULL,
    PRIMARY KEY (resolution, dimension, bucket, value_id, event_type_id),
    CONSTRAINT rollup_sets_resolution CHECK (resolution IN (60, 3600, 86400))
) WITH (fillfactor = 70);
COMMENT ON TABLE rollup_sets IS 'The exact set of users active per bucket, dimension value and event type, as a serialized Roaring bitmap of users.user_id: unions give exact unique users over any range.';
COMMENT ON COLUMN rollup_sets.resolution IS 'Bucket width in seconds: 60, 3600 or 86400.';
COMMENT ON COLUMN rollup_sets.dimension IS '0: every event (value_id 0); 1: pageviews by page; 2: purchases by product.';
COMMENT ON COLUMN rollup_sets.bucket IS 'Start of the bucket, aligned to the resolution in UTC.';
COMMENT ON COLUMN rollup_sets.value_id IS 'The dimension value (dimension_values.value_id); 0 for dimension 0.';
COMMENT ON COLUMN rollup_sets.event_type_id IS 'The event type, or 0 for events of any type (dimension 0 only).';
COMMENT ON COLUMN rollup_sets.users IS 'RoaringTreemap (portable serialization) of users.user_id.';
COMMENT ON COLUMN rollup_sets.cardinality IS 'Number of users in the set.';
CREATE INDEX rollup_sets_value ON rollup_sets (dimension, value_id, resolution, bucket) WHERE dimension <> 0;
COMMENT ON INDEX rollup_sets_value IS 'Requests filtered on one page or product read only that value''s sets.';

CREATE TABLE rollup_count_deltas (
    minute timestamptz NOT NULL,
    dimension smallint NOT NULL,
    value_id integer NOT NULL,
    event_type_id smallint NOT NULL,
    events bigint NOT NULL,
    quantity bigint NOT NULL,
    revenue numeric(30, 4) NOT NULL
);
COMMENT ON TABLE rollup_count_deltas IS 'Counts of ingested events not yet folded into rollup_counts (one row per minute, dimension value and type of each batch).';
COMMENT ON COLUMN rollup_count_deltas.minute IS 'Minute bucket (UTC) of the events.';
COMMENT ON COLUMN rollup_count_deltas.dimension IS 'As rollup_counts.dimension.';
COMMENT ON COLUMN rollup_count_deltas.value_id IS 'As rollup_counts.value_id.';
COMMENT ON COLUMN rollup_count_deltas.event_type_id IS 'The event type.';
COMMENT ON COLUMN rollup_count_deltas.events IS 'Number of new events.';
COMMENT ON COLUMN rollup_count_deltas.quantity IS 'Their summed quantity.';
COMMENT ON COLUMN rollup_count_deltas.revenue IS 'Their summed amount, exact.';

CREATE TABLE rollup_set_deltas (
    minute timestamptz NOT NULL,
    dimension smallint NOT NULL,
    value_id integer NOT NULL,
    event_type_id smallint NOT NULL,
    user_id bigint NOT NULL
);
COMMENT ON TABLE rollup_set_deltas IS 'Users active in a minute, recorded by ingest and not yet folded into rollup_sets.';
COMMENT ON COLUMN rollup_set_deltas.minute IS 'Minute bucket (UTC) of the event.';
COMMENT ON COLUMN rollup_set_deltas.dimension IS 'As rollup_sets.dimension.';
COMMENT ON COLUMN rollup_set_deltas.value_id IS 'As rollup_sets.value_id.';
COMMENT ON COLUMN rollup_set_deltas.event_type_id IS 'The event type (never 0: the any-type sets are derived by the fold).';
COMMENT ON COLUMN rollup_set_deltas.user_id IS 'The user (users.user_id).';

ALTER TABLE rollup_count_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE rollup_set_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0);

CREATE TABLE rollup_folds (
    generation bigint PRIMARY KEY,
    folded_at timestamptz NOT NULL DEFAULT now(),
    everything boolean NOT NULL DEFAULT false,
    minutes timestamptz[] NOT NULL DEFAULT '{}',
    hours timestamptz[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE rollup_folds IS 'What each fold (generation) changed: query caches keep every cached bucket that no later fold touched. Old rows are pruned; a cache that finds its generation pruned starts over.';
COMMENT ON COLUMN rollup_folds.generation IS 'The rollup_state.fold_generation this fold created.';
COMMENT ON COLUMN rollup_folds.folded_at IS 'When the fold committed (database clock).';
COMMENT ON COLUMN rollup_folds.everything IS 'True when every bucket may have changed (a rebuild).';
COMMENT ON COLUMN rollup_folds.minutes IS 'The distinct minutes whose rollups changed, when few; empty when only hours are known.';
COMMENT ON COLUMN rollup_folds.hours IS 'The distinct hours whose rollups (minute, hour or day rows) changed.';

-- Carry the old rollups over.
INSERT INTO dimension_values (dimension, value)
SELECT 1, page_url FROM (SELECT page_url FROM rollup_page_counts WHERE resolution = 86400
                         UNION SELECT page_url FROM rollup_page_deltas) p ORDER BY 2;
INSERT INTO dimension_values (dimension, value)
SELECT 2, product_id FROM (SELECT product_id FROM rollup_product_counts WHERE resolution = 86400
                           UNION SELECT product_id FROM rollup_product_deltas) p ORDER BY 2;
-- Pageviews and purchases that never reached a rollup day row (none, if
-- the database was folded) are still registered by the seeds below.
INSERT INTO dimension_values (dimension, value)
SELECT DISTINCT 1, page_url FROM pageviews ON CONFLICT DO NOTHING;
INSERT INTO dimension_values (dimension, value)
SELECT DISTINCT 2, product_id FROM purchases ON CONFLICT DO NOTHING;

INSERT INTO rollup_counts (resolution, dimension, bucket, value_id, event_type_id, events, quantity, revenue)
SELECT t.resolution, 0, t.bucket, 0, t.event_type_id, t.events,
       coalesce(s.quantity, 0), coalesce(s.revenue, 0)
FROM rollup_type_counts t
LEFT JOIN (SELECT resolution, bucket, sum(quantity)::bigint AS quantity, sum(revenue) AS revenue
           FROM rollup_product_counts GROUP BY 1, 2) s
       ON s.resolution = t.resolution AND s.bucket = t.bucket
      AND t.event_type_id = (SELECT event_type_id FROM event_types WHERE name = 'purchase');
INSERT INTO rollup_counts (resolution, dimension, bucket, value_id, event_type_id, events, quantity, revenue)
SELECT r.resolution, 1, r.bucket, v.value_id, (SELECT event_type_id FROM event_types WHERE name = 'pageview'),
       r.pageviews, 0, 0
FROM rollup_page_counts r JOIN dimension_values v ON v.dimension = 1 AND v.value = r.page_url;
INSERT INTO rollup_counts (resolution, dimension, bucket, value_id, event_type_id, events, quantity, revenue)
SELECT r.resolution, 2, r.bucket, v.value_id, (SELECT event_type_id FROM event_types WHERE name = 'purchase'),
       r.purchases, r.quantity, r.revenue
FROM rollup_product_counts r JOIN dimension_values v ON v.dimension = 2 AND v.value = r.product_id;

INSERT INTO rollup_count_deltas (minute, dimension, value_id, event_type_id, events, quantity, revenue)
SELECT minute, 0, 0, event_type_id, events, 0, 0 FROM rollup_type_deltas;
-- The quantity and revenue of pending purchases, on the purchase type's row.
INSERT INTO rollup_count_deltas (minute, dimension, value_id, event_type_id, events, quantity, revenue)
SELECT minute, 0, 0, (SELECT event_type_id FROM event_types WHERE name = 'purchase'), 0, quantity, revenue
FROM rollup_product_deltas;
INSERT INTO rollup_count_deltas (minute, dimension, value_id, event_type_id, events, quantity, revenue)
SELECT d.minute, 1, v.value_id, (SELECT event_type_id FROM event_types WHERE name = 'pageview'), d.pageviews, 0, 0
FROM rollup_page_deltas d JOIN dimension_values v ON v.dimension = 1 AND v.value = d.page_url;
INSERT INTO rollup_count_deltas (minute, dimension, value_id, event_type_id, events, quantity, revenue)
SELECT d.minute, 2, v.value_id, (SELECT event_type_id FROM event_types WHERE name = 'purchase'),
       d.purchases, d.quantity, d.revenue
FROM rollup_product_deltas d JOIN dimension_values v ON v.dimension = 2 AND v.value = d.product_id;

INSERT INTO rollup_sets (resolution, dimension, bucket, value_id, event_type_id, users, cardinality)
SELECT resolution, 0, bucket, 0, event_type_id, users, cardinality FROM rollup_user_sets;
INSERT INTO rollup_set_deltas (minute, dimension, value_id, event_type_id, user_id)
SELECT minute, 0, 0, event_type_id, user_id FROM rollup_user_deltas;
-- Visitors per page and buyers per product did not exist: seed them from
-- the raw rows (events deleted by retention are gone from these sets).
INSERT INTO rollup_set_deltas (minute, dimension, value_id, event_type_id, user_id)
SELECT DISTINCT date_trunc('minute', e."timestamp", 'UTC'), 1, v.value_id, e.event_type_id, e.user_id
FROM pageviews p JOIN events e USING (event_id)
JOIN dimension_values v ON v.dimension = 1 AND v.value = p.page_url
WHERE e.user_id IS NOT NULL;
INSERT INTO rollup_set_deltas (minute, dimension, value_id, event_type_id, user_id)
SELECT DISTINCT date_trunc('minute', e."timestamp", 'UTC'), 2, v.value_id, e.event_type_id, e.user_id
FROM purchases p JOIN events e USING (event_id)
JOIN dimension_values v ON v.dimension = 2 AND v.value = p.product_id
WHERE e.user_id IS NOT NULL;

-- Every bucket may differ from what a cache holds.
INSERT INTO rollup_folds (generation, everything)
SELECT fold_generation + 1, true FROM rollup_state;
UPDATE rollup_state SET fold_generation = fold_generation + 1;

DROP TABLE rollup_user_deltas;
DROP TABLE rollup_product_deltas;
DROP TABLE rollup_page_deltas;
DROP TABLE rollup_type_deltas;
DROP TABLE rollup_user_sets;
DROP TABLE rollup_product_counts;
DROP TABLE rollup_page_counts;
DROP TABLE rollup_type_counts;
