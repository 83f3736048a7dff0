ALTER TABLE rollup_type_counts RESET (fillfactor);
ALTER TABLE rollup_page_counts RESET (fillfactor);
ALTER TABLE rollup_product_counts RESET (fillfactor);
ALTER TABLE rollup_user_sets RESET (fillfactor);
