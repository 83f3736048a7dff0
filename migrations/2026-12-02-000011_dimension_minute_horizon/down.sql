-- Before this migration every minute row was kept: minutes folded while it
-- applied and older than its horizon have no minute row for pages and
-- products. Run `pulse rollups rebuild` after reverting it.
ALTER TABLE rollup_state DROP COLUMN dimension_minute_seconds;
