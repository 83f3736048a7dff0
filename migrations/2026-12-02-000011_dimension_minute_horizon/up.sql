-- Minute-level rollups of pages and products are kept only for recent
-- minutes. A history import or a late event older than the horizon is
-- folded into hour and day rows only: one minute row per (minute, page)
-- cost a fold about one upsert per pageview of sparse history, more than
-- the rows themselves (ARCHITECTURE.md "Rollups"). Queries read minutes
-- older than the horizon of those dimensions from raw events, and cache
-- them like rollup buckets.
--
-- The horizon lives here, not in a flag, so every instance's folds and
-- queries agree on it. Lowering it is safe; raising it is not (older
-- minutes would be trusted before their rows exist).
ALTER TABLE rollup_state
    ADD COLUMN dimension_minute_seconds integer NOT NULL DEFAULT 93600,
    ADD CONSTRAINT rollup_state_dimension_minute_seconds CHECK (dimension_minute_seconds >= 3600);
COMMENT ON COLUMN rollup_state.dimension_minute_seconds IS 'Minute rows of dimensions other than 0 are written only for minutes at most this old when folded (26 h: the dashboard''s 24-hour view stays on stored minutes); older minutes are read from raw events.';
