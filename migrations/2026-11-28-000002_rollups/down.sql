DROP TABLE rollup_user_deltas;
DROP TABLE rollup_product_deltas;
DROP TABLE rollup_page_deltas;
DROP TABLE rollup_type_deltas;
DROP TABLE rollup_user_sets;
DROP TABLE rollup_product_counts;
DROP TABLE rollup_page_counts;
DROP TABLE rollup_type_counts;
