DROP TABLE rollup_state;
