-- Minutes of pages and products that retention deleted from raw events.
--
-- Older than the minute horizon (rollup_state.dimension_minute_seconds),
-- those minutes have no rollup rows of their own: queries read them from
-- raw events. Retention deletes raw events, so in the same statement it
-- moves what a minute read needs into these two tables, and queries read
-- raw events and these rows together, in one statement: every deleted
-- event is in exactly one of the two at every moment. Rollups of hours and
-- days, and every minute of dimension 0, never needed raw events.
CREATE TABLE retired_counts (
    dimension smallint NOT NULL,
    minute timestamptz NOT NULL,
    value_id integer NOT NULL,
    event_type_id smallint NOT NULL,
    events bigint NOT NULL,
    quantity bigint NOT NULL,
    revenue numeric(30, 4) NOT NULL,
    PRIMARY KEY (dimension, minute, value_id, event_type_id),
    CONSTRAINT retired_counts_dimension CHECK (dimension IN (1, 2))
);
COMMENT ON COLUMN retired_counts.dimension IS '1: pageviews by page; 2: purchases by product.';
COMMENT ON COLUMN retired_counts.minute IS 'Start of the minute (UTC) the deleted events fell in.';
COMMENT ON COLUMN retired_counts.value_id IS 'The page or product (dimension_values.value_id).';
COMMENT ON COLUMN retired_counts.event_type_id IS 'The event type (event_types.event_type_id).';
COMMENT ON COLUMN retired_counts.events IS 'Number of deleted events.';
COMMENT ON COLUMN retired_counts.quantity IS 'Sum of purchased quantities (0 for pageviews).';
COMMENT ON COLUMN retired_counts.revenue IS 'Sum of purchase amounts, exact (0 for pageviews).';
COMMENT ON TABLE retired_counts IS 'Pageviews per page and purchases per product per minute, of raw events deleted by retention (read with raw events for minutes older than the minute horizon).';

CREATE TABLE retired_users (
    dimension smallint NOT NULL,
    minute timestamptz NOT NULL,
    value_id integer NOT NULL,
    event_type_id smallint NOT NULL,
    user_id bigint NOT NULL,
    PRIMARY KEY (dimension, minute, value_id, event_type_id, user_id),
    CONSTRAINT retired_users_dimension CHECK (dimension IN (1, 2))
);
COMMENT ON COLUMN retired_users.dimension IS '1: pageviews by page; 2: purchases by product.';
COMMENT ON COLUMN retired_users.minute IS 'Start of the minute (UTC) the deleted events fell in.';
COMMENT ON COLUMN retired_users.value_id IS 'The page or product (dimension_values.value_id).';
COMMENT ON COLUMN retired_users.event_type_id IS 'The event type (event_types.event_type_id).';
COMMENT ON COLUMN retired_users.user_id IS 'A user with at least one deleted event there (users.user_id).';
COMMENT ON TABLE retired_users IS 'The users behind retired_counts: one row per (minute, page or product, type, user) of raw events deleted by retention.';
