#!/usr/bin/env bash
# The reference workload (docs/benchmarks.md): EVENTS events with timestamps
# spread uniformly over the last DAYS days, USERS users, PAGES pages and
# PRODUCTS products (Zipf), loaded through IngestEvents into a fresh
# database, then `pulse bench-queries` (repeated and shifted) against it,
# side by side with a baseline build loaded the same way.
#
#   NEW_BIN=target/release/pulse OLD_BIN=/path/to/older/pulse scripts/bench-reference.sh
#
# Steps (each prints as it goes; a summary is in $WORKDIR/reference.txt):
#   1. for each build (new, then old if OLD_BIN is set): recreate database
#      pulse_ref_<build>, start `pulse serve` on it, load the events with
#      `pulse loadgen` (the history import: rate per million events and the
#      server's RSS are logged), leave the server running;
#   2. `pulse bench-queries` against the new server with the old one as
#      baseline (BASELINE_CALLS per mode, since the old build takes seconds
#      for some shapes);
#   3. LIVE_RATE events/s of live traffic ("now") into the new server while
#      the queries run again (skipped with LIVE_RATE=0).
# SKIP_LOAD=1 reuses the databases of an earlier run; LOAD="old" loads only
# the listed builds and reuses the others' databases. The servers are
# stopped on exit; the databases are kept (DROP_DBS=1 drops them).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${EVENTS:-10000000}"
DAYS="${DAYS:-7}"
USERS="${USERS:-100000}"
PAGES="${PAGES:-2000}"
PRODUCTS="${PRODUCTS:-500}"
CONCURRENCY="${CONCURRENCY:-4}"
BATCH="${BATCH:-1000}"
CALLS="${CALLS:-100}"
BASELINE_CALLS="${BASELINE_CALLS:-20}"
LIVE_RATE="${LIVE_RATE:-2000}"
SKIP_LOAD="${SKIP_LOAD:-0}"
LOAD="${LOAD:-new old}"
DROP_DBS="${DROP_DBS:-0}"
WORKDIR="${WORKDIR:-/var/tmp/pulse-bench}"
ADMIN_URL="${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
NEW_BIN="${NEW_BIN:-${CARGO_TARGET_DIR:-target}/release/pulse}"
OLD_BIN="${OLD_BIN:-}"

mkdir -p "$WORKDIR"
log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'bench-reference: %s\n' "$*" >&2; exit 1; }
[ -x "$NEW_BIN" ] || die "no pulse binary at $NEW_BIN (cargo build --release, or set NEW_BIN)"
[ -z "$OLD_BIN" ] || [ -x "$OLD_BIN" ] || die "no baseline binary at $OLD_BIN"

db_url() {
    local base="${ADMIN_URL%%\?*}"
    printf '%s/%s' "${base%/*}" "$1"
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local port="$1"
    while ! port_free "$port"; do port=$((port + 1)); done
    echo "$port"
}
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }
hwm_mb() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$DROP_DBS" = 1 ]; then
        for b in new old; do
            psql -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS pulse_ref_$b WITH (FORCE)" >/dev/null 2>&1 || true
        done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

summary="$WORKDIR/reference.txt"
: >"$summary"
base_time="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# Starts a server for build $1 (binary $2); sets SERVER_PID and GRPC.
start() {
    local build="$1" bin="$2" url
    url="$(db_url "pulse_ref_$build")"
    local grpc_port http_port
    grpc_port="$(free_port 50600)"
    http_port="$(free_port 8600)"
    GRPC="127.0.0.1:$grpc_port"
    "$bin" serve --database-url "$url" --grpc-addr "$GRPC" --http-addr "127.0.0.1:$http_port" \
        >"$WORKDIR/serve-$build.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 1 600); do
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$WORKDIR/serve-$build.log" >&2; die "pulse serve ($build) exited"; }
        port_free "$grpc_port" || return 0
        sleep 0.2
    done
    die "pulse serve ($build) did not listen in 120 s"
}

declare -A ADDR PID
for build in new old; do
    bin="$NEW_BIN"
    if [ "$build" = old ]; then
        [ -n "$OLD_BIN" ] || continue
        bin="$OLD_BIN"
    fi
    load=0
    if [ "$SKIP_LOAD" != 1 ] && [[ " $LOAD " == *" $build "* ]]; then load=1; fi
    if [ "$load" = 1 ]; then
        psql -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS pulse_ref_$build WITH (FORCE)" >/dev/null
    fi
    start "$build" "$bin"
    ADDR[$build]="$GRPC"
    PID[$build]="$SERVER_PID"
    if [ "$load" = 0 ]; then
        continue
    fi
    log "$build: loading $EVENTS events over $DAYS days through IngestEvents (history import)"
    started="$(date +%s.%N)"
    "$bin" loadgen --grpc-addr "http://$GRPC" --events "$EVENTS" --seed 1 --users "$USERS" \
        --pages "$PAGES" --products "$PRODUCTS" --days "$DAYS" --base-time "$base_time" \
        --concurrency "$CONCURRENCY" --batch-size "$BATCH" \
        >"$WORKDIR/load-$build.out" 2>"$WORKDIR/load-$build.err" &
    loader=$!
    # loadgen reports acknowledged events every 5 s; every 30 s, log the
    # rate of the last 5 s and the server's memory beside it.
    while kill -0 "$loader" 2>/dev/null; do
        sleep 30
        line="$(grep 'events acknowledged' "$WORKDIR/load-$build.err" | tail -1 || true)"
        [ -n "$line" ] && printf '%s  %s  RSS %s MiB (peak %s)\n' "$build" "${line#loadgen: }" \
            "$(rss_mb "$SERVER_PID")" "$(hwm_mb "$SERVER_PID")" | tee -a "$summary"
    done
    wait "$loader" || { tail -5 "$WORKDIR/load-$build.err" >&2; die "loadgen failed"; }
    awk -v b="$build" -v n="$EVENTS" -v s="$started" -v e="$(date +%s.%N)" \
        'BEGIN { printf "%s  loaded %d events in %.0f s: %.0f events/s\n", b, n, e - s, n / (e - s) }' | tee -a "$summary"
    grep -E 'accepted|failed|p99' "$WORKDIR/load-$build.out" | sed "s/^/$build  /" | tee -a "$summary"
done

args=(--grpc-addr "http://${ADDR[new]}" --pid "${PID[new]}" --calls "$CALLS"
    --database-url "$(db_url pulse_ref_new)")
if [ -n "${ADDR[old]:-}" ]; then
    args+=(--baseline-addr "http://${ADDR[old]}" --baseline-pid "${PID[old]}" --baseline-calls "$BASELINE_CALLS")
fi
log "queries, quiet"
echo "Queries on a quiet store (new | baseline | plain SQL on the new database)" | tee -a "$summary"
"$NEW_BIN" bench-queries "${args[@]}" | tee -a "$summary"

if [ "$LIVE_RATE" != 0 ]; then
    log "queries under $LIVE_RATE events/s of live traffic into the new server"
    "$NEW_BIN" loadgen --grpc-addr "http://${ADDR[new]}" --users "$USERS" --pages "$PAGES" \
        --products "$PRODUCTS" --rate "$LIVE_RATE" --events $((LIVE_RATE * 3600)) --seed 7 \
        --concurrency 4 --batch-size 100 >"$WORKDIR/live.out" 2>&1 &
    live=$!
    PIDS+=("$live")
    sleep 5
    echo "Queries under $LIVE_RATE events/s of live traffic (new server only)" | tee -a "$summary"
    "$NEW_BIN" bench-queries --grpc-addr "http://${ADDR[new]}" --pid "${PID[new]}" --calls "$CALLS" --no-sql \
        | tee -a "$summary"
    kill -TERM "$live" 2>/dev/null || true
fi
echo
echo "summary: $summary"
