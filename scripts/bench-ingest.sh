#!/usr/bin/env bash
# Ingest benchmark (SPEC §7): `IngestEvents` throughput against `psql \copy`
# of the same rows into the same schema, side by side in one run, with
# PRELOAD events already stored; then the ack latency at half that rate.
#
#   PRELOAD=200000 MEASURE=50000 HALF_RATE_SECONDS=10 scripts/bench-ingest.sh
#
# What it does:
#   1. builds `pulse` (release; honours CARGO_TARGET_DIR, or set PULSE_BIN to
#      use a binary you built);
#   2. recreates database pulse_bench_a, migrates it, and loads the preload
#      with \copy (users, events, pageviews, purchases), VACUUM ANALYZE,
#      CHECKPOINT (and `pulse rollups rebuild` when the binary has it, see
#      below); then clones it as pulse_bench_b, so both hold the same
#      PRELOAD events;
#   3. writes the MEASURE set (seed MEASURE_SEED, event i at BASE + i µs,
#      BASE = the current time) as CSV, and times one psql session that
#      \copies its events, pageviews and purchases into pulse_bench_a;
#   4. starts `pulse serve` on pulse_bench_b and sends the very same rows
#      (same seed, same --base-time) with `pulse loadgen`, flat out;
#   5. prints rows, seconds and events/s of both, and the ratio;
#   6. checks that both databases now hold identical MEASURE rows;
#   7. runs loadgen at half the measured gRPC rate for HALF_RATE_SECONDS
#      (new events, stamped "now") and prints ack p50/p99;
#   8. stops the server and checks pulse_bench_b by SQL: exactly
#      PRELOAD + MEASURE + half-rate events, detail rows 1:1 with events.
#
# The preload CSVs are kept in WORKDIR and reused by later runs with the same
# PRELOAD, PRELOAD_SEED, USERS and PRELOAD_DAYS (delete WORKDIR/preload-* to
# regenerate; their timestamps end when they were first written). The users
# table of both databases is loaded from users.csv first, so user N gets the
# surrogate key N+1 that the CSV rows use (see src/loadgen/csv.rs).
#
# The server and every other process it starts are stopped on exit. It only
# ever drops or creates pulse_bench_a and pulse_bench_b, which are left in
# place for inspection (DROP_DBS=1 drops them at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

PRELOAD="${PRELOAD:-10000000}"
MEASURE="${MEASURE:-1000000}"
CONCURRENCY="${CONCURRENCY:-4}"
BATCH="${BATCH:-500}"
MESSAGES_PER_STREAM="${MESSAGES_PER_STREAM:-1}"
WORKDIR="${WORKDIR:-/var/tmp/pulse-bench}"
ADMIN_URL="${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
HALF_RATE_SECONDS="${HALF_RATE_SECONDS:-60}"
# The half-rate run models a steady producer: smaller batches, more streams.
HALF_BATCH="${HALF_BATCH:-100}"
HALF_CONCURRENCY="${HALF_CONCURRENCY:-8}"
USERS="${USERS:-100000}"
PRELOAD_DAYS="${PRELOAD_DAYS:-7}"
PRELOAD_SEED="${PRELOAD_SEED:-1}"
MEASURE_SEED="${MEASURE_SEED:-2}"
# 0: the measured events happen "now" (live traffic); 7: they are spread
# over the same 7 days as the preload (a history import landing in hours and
# days that already hold millions).
MEASURE_DAYS="${MEASURE_DAYS:-0}"
PAGES="${PAGES:-2000}"
HALF_SEED="${HALF_SEED:-3}"
GRPC_PORT="${GRPC_PORT:-50551}"
HTTP_PORT="${HTTP_PORT:-8581}"
DROP_DBS="${DROP_DBS:-0}"

DB_A=pulse_bench_a
DB_B=pulse_bench_b

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'bench-ingest: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# The URL of database $1 on the server of ADMIN_URL (query string kept).
db_url() {
    local base="${ADMIN_URL%%\?*}" query=""
    [[ "$ADMIN_URL" == *\?* ]] && query="?${ADMIN_URL#*\?}"
    printf '%s/%s%s' "${base%/*}" "$1" "$query"
}
URL_A="$(db_url "$DB_A")"
URL_B="$(db_url "$DB_B")"

psql_q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$1" -c "$2"; }

# A field of the RESULT line of a loadgen output file.
result() { sed -n "s/^RESULT.* $2=\([^ ]*\).*/\1/p" "$1" | head -1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local port="$1"
    while ! port_free "$port"; do port=$((port + 1)); done
    echo "$port"
}

SERVER_PID=""
cleanup() {
    local status=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$DROP_DBS" = 1 ]; then
        psql_q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB_B WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS $DB_A WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

case "$WORKDIR" in *"'"*) die "WORKDIR must not contain a single quote" ;; esac
for n in PRELOAD MEASURE CONCURRENCY BATCH HALF_RATE_SECONDS USERS; do
    [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n must be a whole number, got '${!n}'"
done
command -v psql >/dev/null || die "psql is not on PATH"
mkdir -p "$WORKDIR"

# 1. The binary.
if [ -n "${PULSE_BIN:-}" ]; then
    PULSE="$PULSE_BIN"
else
    log "cargo build --release"
    cargo build --release
    target="${CARGO_TARGET_DIR:-target}"
    [[ "$target" = /* ]] || target="$ROOT/$target"
    PULSE="$target/release/pulse"
fi
[ -x "$PULSE" ] || die "no pulse binary at $PULSE"

# 2. The preload, in A, cloned to B.
preload_dir="$WORKDIR/preload-n$PRELOAD-s$PRELOAD_SEED-u$USERS-p$PAGES-d$PRELOAD_DAYS"
if [ ! -f "$preload_dir/complete" ]; then
    log "writing $PRELOAD preload events over $PRELOAD_DAYS days to $preload_dir"
    rm -rf "$preload_dir"
    "$PULSE" loadgen --write-csv "$preload_dir" --events "$PRELOAD" --seed "$PRELOAD_SEED" \
        --users "$USERS" --pages "$PAGES" --days "$PRELOAD_DAYS" --base-time "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    touch "$preload_dir/complete"
else
    log "reusing the preload CSVs in $preload_dir"
fi

log "recreating $DB_A and $DB_B"
psql_q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB_B WITH (FORCE)" \
    -c "DROP DATABASE IF EXISTS $DB_A WITH (FORCE)"
"$PULSE" migrate run --database-url "$URL_A"

log "loading the preload into $DB_A"
started="$(now)"
psql_q "$URL_A" <<SQL
\copy users (external_id) FROM '$preload_dir/users.csv' WITH (FORMAT csv, HEADER true)
\copy events (event_id, "timestamp", user_id, event_type_id, data) FROM '$preload_dir/events.csv' WITH (FORMAT csv, HEADER true)
\copy pageviews (event_id, user_id, page_url) FROM '$preload_dir/pageviews.csv' WITH (FORMAT csv, HEADER true)
\copy purchases (event_id, user_id, product_id, quantity, amount) FROM '$preload_dir/purchases.csv' WITH (FORMAT csv, HEADER true)
VACUUM ANALYZE;
CHECKPOINT;
SQL
echo "preload loaded in $(elapsed "$started" "$(now)") s" >&2
# \copy bypasses the rollups that IngestEvents maintains; rebuild them, so
# the measured runs meet rollup tables that already hold the preload (an
# empty rollup table would flatter IngestEvents). Skipped by binaries
# without `pulse rollups`, or with ROLLUPS=0.
if [ "${ROLLUPS:-1}" = 1 ] && "$PULSE" rollups rebuild --help >/dev/null 2>&1; then
    log "pulse rollups rebuild on $DB_A"
    "$PULSE" rollups rebuild --database-url "$URL_A"
    psql_q "$URL_A" -c "VACUUM ANALYZE" -c CHECKPOINT
fi
users_ok="$(sql "$URL_A" "SELECT count(*) = $USERS AND min(user_id) = 1 AND max(user_id) = $USERS FROM users")"
[ "$users_ok" = t ] || die "users did not get surrogate keys 1..$USERS in order; the CSV user ids would be wrong"

strategy=""
[ "$(sql "$ADMIN_URL" "SHOW server_version_num")" -ge 150000 ] && strategy="STRATEGY = FILE_COPY"
psql_q "$ADMIN_URL" -c "CREATE DATABASE $DB_B TEMPLATE $DB_A $strategy"

# 3. The measured set, by \copy into A.
base_time="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
measure_dir="$WORKDIR/measure"
log "writing $MEASURE measured events (seed $MEASURE_SEED, from $base_time) to $measure_dir"
rm -rf "$measure_dir"
"$PULSE" loadgen --write-csv "$measure_dir" --events "$MEASURE" --seed "$MEASURE_SEED" \
    --users "$USERS" --pages "$PAGES" --days "$MEASURE_DAYS" --base-time "$base_time"

log "psql \\copy of $MEASURE events into $DB_A"
started="$(now)"
psql_q "$URL_A" <<SQL
\copy events (event_id, "timestamp", user_id, event_type_id, data) FROM '$measure_dir/events.csv' WITH (FORMAT csv, HEADER true)
\copy pageviews (event_id, user_id, page_url) FROM '$measure_dir/pageviews.csv' WITH (FORMAT csv, HEADER true)
\copy purchases (event_id, user_id, product_id, quantity, amount) FROM '$measure_dir/purchases.csv' WITH (FORMAT csv, HEADER true)
SQL
copy_s="$(elapsed "$started" "$(now)")"
# Not timed: flush what the COPY dirtied, so it does not slow the gRPC run.
psql_q "$URL_A" -c CHECKPOINT

# 4. The same rows over IngestEvents into B.
GRPC_PORT="$(free_port "$GRPC_PORT")"
HTTP_PORT="$(free_port "$HTTP_PORT")"
grpc_addr="127.0.0.1:$GRPC_PORT"
log "pulse serve on $DB_B (gRPC $grpc_addr, HTTP 127.0.0.1:$HTTP_PORT; log in $WORKDIR/serve.log)"
"$PULSE" serve --database-url "$URL_B" --grpc-addr "$grpc_addr" \
    --http-addr "127.0.0.1:$HTTP_PORT" --no-migrate >"$WORKDIR/serve.log" 2>&1 &
SERVER_PID=$!
ready=""
for _ in $(seq 1 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$WORKDIR/serve.log" >&2; die "pulse serve exited"; }
    if command -v grpcurl >/dev/null; then
        if grpcurl -plaintext -d '{"service":"pulse.v1.IngestService"}' "$grpc_addr" \
            grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then
            ready=1
            break
        fi
    elif ! port_free "$GRPC_PORT"; then
        ready=1
        break
    fi
    sleep 0.2
done
[ -n "$ready" ] || die "pulse serve did not become ready in 20 s"

log "pulse loadgen: the same $MEASURE events, flat out"
loadgen=("$PULSE" loadgen --grpc-addr "http://$grpc_addr" --users "$USERS" --pages "$PAGES"
    --concurrency "$CONCURRENCY" --batch-size "$BATCH" --messages-per-stream "$MESSAGES_PER_STREAM")
started="$(now)"
"${loadgen[@]}" --events "$MEASURE" --seed "$MEASURE_SEED" --days "$MEASURE_DAYS" --base-time "$base_time" \
    | tee "$WORKDIR/loadgen-flat.out"
grpc_s="$(result "$WORKDIR/loadgen-flat.out" wall_s)"
# Acknowledged is durable; the rollups may still be folding the deltas
# (queries count them either way). Report when the fold has caught up too.
# (Every table named rollup_*deltas, whatever the build's schema.)
pending_deltas="SELECT coalesce(sum((xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I', relname), false, true, '')))[1]::text::bigint), 0)
                FROM pg_class WHERE relname LIKE 'rollup%deltas' AND relkind = 'r'"
while [ "$(sql "$URL_B" "$pending_deltas")" != 0 ]; do
    sleep 0.2
done
folded_s="$(elapsed "$started" "$(now)")"
grpc_eps="$(result "$WORKDIR/loadgen-flat.out" events_per_s)"
grpc_accepted="$(result "$WORKDIR/loadgen-flat.out" accepted)"

# 5. Side by side. The summary is printed as it grows and again at the end.
summary="$WORKDIR/summary.txt"
{
    echo
    echo "Ingest of $MEASURE events with $PRELOAD already stored ($CONCURRENCY streams × $MESSAGES_PER_STREAM message(s) of $BATCH events; timestamps over $MEASURE_DAYS days)"
    awk -v rows="$MEASURE" -v cs="$copy_s" -v gs="$grpc_s" -v acc="$grpc_accepted" -v fs="$folded_s" 'BEGIN {
        ce = rows / cs; ge = acc / gs
        printf "  %-16s %10s %10s %12s\n", "", "rows", "seconds", "events/s"
        printf "  %-16s %10d %10.2f %12.0f\n", "psql \\copy", rows, cs, ce
        printf "  %-16s %10d %10.2f %12.0f\n", "IngestEvents", acc, gs, ge
        printf "  IngestEvents / \\copy = %.1f %%  (target >= 90 %%)\n", 100 * ge / ce
        printf "  rollups caught up %.2f s after the first event (%.0f events/s folded)\n", fs, acc / fs
    }'
} | tee "$summary"

# 6. The two databases hold the same measured rows. Timestamps are left out:
#    the server corrects them for clock skew with sent_at, which shifts each
#    by its transmission delay.
checksums() {
    sql "$1" "
    SELECT (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws('|', event_id, user_id, event_type_id, data::text), 0)::numeric), 0)
              FROM events WHERE \"timestamp\" >= '$base_time')
      || ' ' || (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws('|', p.event_id, p.user_id, p.page_url), 0)::numeric), 0)
              FROM pageviews p JOIN events e USING (event_id) WHERE e.\"timestamp\" >= '$base_time')
      || ' ' || (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws('|', p.event_id, p.user_id, p.product_id, p.quantity, p.amount), 0)::numeric), 0)
              FROM purchases p JOIN events e USING (event_id) WHERE e.\"timestamp\" >= '$base_time')"
}
sums_a="$(checksums "$URL_A")"
sums_b="$(checksums "$URL_B")"
if [ "$sums_a" = "$sums_b" ]; then
    same_rows="yes"
else
    same_rows="NO (events:pageviews:purchases count:hash  copy=$sums_a  grpc=$sums_b)"
fi
echo "  same rows in both databases: $same_rows" | tee -a "$summary"

# 7. Ack latency at half the measured rate.
half_rate="$(awk -v e="$grpc_eps" 'BEGIN { printf "%d", e / 2 }')"
[ "$half_rate" -ge 1 ] || die "the gRPC run measured no throughput"
half_events=$((half_rate * HALF_RATE_SECONDS))
log "pulse loadgen at $half_rate events/s for $HALF_RATE_SECONDS s (new events, stamped now)"
"$PULSE" loadgen --grpc-addr "http://$grpc_addr" --users "$USERS" \
    --concurrency "$HALF_CONCURRENCY" --batch-size "$HALF_BATCH" --messages-per-stream 1 \
    --events "$half_events" --seed "$HALF_SEED" --rate "$half_rate" \
    | tee "$WORKDIR/loadgen-half.out"
half_accepted="$(result "$WORKDIR/loadgen-half.out" accepted)"
half_eps="$(result "$WORKDIR/loadgen-half.out" events_per_s)"
half_p50="$(result "$WORKDIR/loadgen-half.out" p50_ms)"
half_p99="$(result "$WORKDIR/loadgen-half.out" p99_ms)"

# 8. Stop the server; check B.
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
SERVER_PID=""

expected_a=$((PRELOAD + MEASURE))
expected_b=$((PRELOAD + MEASURE + half_accepted))
read -r events_a <<<"$(sql "$URL_A" "SELECT count(*) FROM events")"
IFS='|' read -r events_b pageviews_b pageview_events_b purchases_b purchase_events_b <<<"$(sql "$URL_B" "
    SELECT (SELECT count(*) FROM events),
           (SELECT count(DISTINCT event_id) FROM pageviews),
           (SELECT count(*) FROM events WHERE event_type_id = 1),
           (SELECT count(DISTINCT event_id) FROM purchases),
           (SELECT count(*) FROM events WHERE event_type_id = 3)")"

{
    echo
    echo "Ack latency at half rate ($half_rate events/s offered, $half_eps events/s acknowledged, $HALF_RATE_SECONDS s, $HALF_CONCURRENCY streams × $HALF_BATCH-event batches)"
    echo "  p50 ${half_p50} ms   p99 ${half_p99} ms  (target p99 < 50 ms)"
    echo
} >>"$summary"
failures=0
check() {
    if [ "$2" = "$3" ]; then
        printf '  ok    %s: %s\n' "$1" "$2"
    else
        printf '  FAIL  %s: %s, expected %s\n' "$1" "$2" "$3"
        failures=$((failures + 1))
    fi
}
duplicates=$(($(result "$WORKDIR/loadgen-flat.out" duplicates) + $(result "$WORKDIR/loadgen-half.out" duplicates)))
{
    echo "Checks"
    check "$DB_A events (preload + measured)" "$events_a" "$expected_a"
    check "$DB_B events (preload + measured + half-rate)" "$events_b" "$expected_b"
    check "$DB_B pageview rows = pageview events" "$pageviews_b" "$pageview_events_b"
    check "$DB_B purchase rows = purchase events" "$purchases_b" "$purchase_events_b"
    check "measured events accepted over gRPC" "$grpc_accepted" "$MEASURE"
    check "duplicates reported over gRPC" "$duplicates" 0
    check "measured rows identical in both databases" "$same_rows" "yes"
} >>"$summary"
echo
echo "================================ summary ================================"
cat "$summary"
[ "$failures" = 0 ] || die "$failures check(s) failed"
