-- Rollup rows of the current hour and day are updated by every fold: leave
-- room on each page so those updates stay HOT (no new index entries, dead
-- versions pruned in place).
ALTER TABLE rollup_type_counts SET (fillfactor = 70);
ALTER TABLE rollup_page_counts SET (fillfactor = 70);
ALTER TABLE rollup_product_counts SET (fillfactor = 70);
ALTER TABLE rollup_user_sets SET (fillfactor = 70);
