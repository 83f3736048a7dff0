-- Minute answers by page or product of ranges already deleted by retention
-- are lost with these tables.
DROP TABLE retired_users;
DROP TABLE retired_counts;
