#!/usr/bin/env bash
# Live reads over a pending-delta file left large by a history import
# (docs/benchmarks.md): for OLD_BIN then NEW_BIN, on the same loaded store,
# recreate an empty ~13 MB `rollup_count_deltas` file, serve, wait 40 s
# (a shrink may run), then `pulse bench-queries` (repeated and shifted
# GetMetrics) and scripts/bench-alerts.sh (1,000 rules, 1,000 events/s).
#
#   DB=postgres://postgres@127.0.0.1:5432/pulse_alerts OLD_BIN=… NEW_BIN=… scripts/bench-delta-bloat.sh
#
# DB must hold events already (e.g. `pulse loadgen --events 2000000 --days 7`).
set -euo pipefail
cd "$(dirname "$0")/.."
DB="${DB:?a loaded database URL}"
GRPC="${GRPC:-127.0.0.1:50551}"
HTTP="${HTTP:-127.0.0.1:8551}"
for build in old new; do
    bin="${OLD_BIN:?}"
    [ "$build" = new ] && bin="${NEW_BIN:?}"
    psql -X -q "$DB" -c "BEGIN; INSERT INTO rollup_count_deltas (minute, dimension, value_id, event_type_id, events, quantity, revenue)
        SELECT TIMESTAMPTZ '2026-01-01', 0, 0, 1, 1, 0, 0 FROM generate_series(1, 150000);
        DELETE FROM rollup_count_deltas WHERE minute = TIMESTAMPTZ '2026-01-01'; COMMIT;"
    psql -X -q "$DB" -c "VACUUM rollup_count_deltas"
    "$bin" serve --database-url "$DB" --grpc-addr "$GRPC" --http-addr "$HTTP" >"/var/tmp/delta-bloat-$build.log" 2>&1 &
    pid=$!
    sleep 40
    echo "== $build: delta files $(psql -X "$DB" -Atc "SELECT pg_size_pretty(pg_relation_size('rollup_count_deltas')) || ' / ' || pg_size_pretty(pg_relation_size('rollup_set_deltas'))")"
    "$bin" bench-queries --grpc-addr "http://$GRPC" --calls 50 --no-sql 2>&1 | grep -v '^$'
    GRPC="$GRPC" HTTP="$HTTP" PULSE_BIN="$bin" SECONDS_RUN=20 scripts/bench-alerts.sh 2>/dev/null | tail -1
    kill -TERM "$pid"
    wait "$pid" || true
done
