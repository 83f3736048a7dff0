-- A counter bumped by every fold, in the fold's transaction. Rollup tables
-- change only in folds, so (query, generation) identifies the rollup part of
-- an answer exactly: the query cache keys on it and can never be stale.
CREATE TABLE rollup_state (
    singleton boolean PRIMARY KEY DEFAULT true,
    fold_generation bigint NOT NULL,
    CONSTRAINT rollup_state_singleton CHECK (singleton)
);
COMMENT ON TABLE rollup_state IS 'One row: the state of the rollup tables as a whole.';
COMMENT ON COLUMN rollup_state.singleton IS 'Always true: the table holds one row.';
COMMENT ON COLUMN rollup_state.fold_generation IS 'Incremented by every fold that changed a rollup table; the query cache keys on it.';
INSERT INTO rollup_state (fold_generation) VALUES (0);
