#!/usr/bin/env bash
# Server memory under the cases that used to blow it up (docs/benchmarks.md),
# for the new build and, with OLD_BIN, a baseline build, side by side:
#
#   1. top-10 pages per minute over 24 h with PAGES_WIDE distinct pages
#      (gRPC GetMetrics, then the same through /api/v1/metrics);
#   2. events per minute by type over 24 h with TYPES_WIDE distinct types;
#   3. 8 concurrent streams of ~3.7 MB messages (450 events × 8 KB data).
#
# Each build gets fresh databases (pulse_mem_<build>_<case>) and a fresh
# server per case; VmRSS before, VmHWM (peak) and VmRSS after are read from
# /proc. Prints one table at the end.
#
#   NEW_BIN=target/release/pulse OLD_BIN=/path/to/old/pulse scripts/bench-memory.sh
#
# ONLY="pages types big" (the default) picks the cases to run.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${EVENTS:-1000000}"
PAGES_WIDE="${PAGES_WIDE:-20000}"
TYPES_WIDE="${TYPES_WIDE:-10000}"
WORKDIR="${WORKDIR:-/var/tmp/pulse-bench}"
ADMIN_URL="${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
NEW_BIN="${NEW_BIN:-${CARGO_TARGET_DIR:-target}/release/pulse}"
OLD_BIN="${OLD_BIN:-}"
ONLY="${ONLY:-pages types big}"
want() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
mkdir -p "$WORKDIR"

die() { printf 'bench-memory: %s\n' "$*" >&2; exit 1; }
[ -x "$NEW_BIN" ] || die "no pulse binary at $NEW_BIN"
db_url() { local base="${ADMIN_URL%%\?*}"; printf '%s/%s' "${base%/*}" "$1"; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { local p="$1"; while ! port_free "$p"; do p=$((p + 1)); done; echo "$p"; }
field_mb() { awk -v f="$2:" '$1 == f {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

SERVER_PID=""
stop() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop EXIT

# start BIN DB: a fresh database and server; sets SERVER_PID, GRPC, HTTP.
start() {
    local bin="$1" db="$2"
    psql -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
    local gp hp
    gp="$(free_port 50700)"
    hp="$(free_port 8700)"
    GRPC="127.0.0.1:$gp"
    HTTP="127.0.0.1:$hp"
    "$bin" serve --database-url "$(db_url "$db")" --grpc-addr "$GRPC" --http-addr "$HTTP" \
        --max-event-types 20000 >"$WORKDIR/mem-serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        port_free "$gp" || return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    # An older build without --max-event-types: start it without the flag.
    "$bin" serve --database-url "$(db_url "$db")" --grpc-addr "$GRPC" --http-addr "$HTTP" \
        >"$WORKDIR/mem-serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        port_free "$gp" || return 0
        sleep 0.2
    done
    die "server did not start: $(tail -3 "$WORKDIR/mem-serve.log")"
}

rows=()
record() { rows+=("$(printf '%-6s %-44s %9s %9s %9s %s' "$@")"); }

now_iso() { date -u +%Y-%m-%dT%H:%M:%SZ; }
ago_iso() { date -u -d "$1" +%Y-%m-%dT%H:%M:%SZ; }

for build in new old; do
    bin="$NEW_BIN"
    if [ "$build" = old ]; then
        [ -n "$OLD_BIN" ] || continue
        bin="$OLD_BIN"
    fi

    # 1. Wide pages.
    if want pages; then
    start "$bin" "pulse_mem_${build}_pages"
    "$NEW_BIN" loadgen --grpc-addr "http://$GRPC" --events "$EVENTS" --pages "$PAGES_WIDE" --zipf-exponent 0.5 \
        --days 1 --batch-size 1000 >/dev/null 2>&1
    sleep 2
    before="$(field_mb "$SERVER_PID" VmRSS)"
    started="$(date +%s.%N)"
    out="$(grpcurl -plaintext -max-msg-sz 100000000 -d "{\"metric\":\"METRIC_PAGEVIEWS\",\"start\":\"$(ago_iso '-24 hours')\",\"end\":\"$(now_iso)\",\"granularity\":\"GRANULARITY_MINUTE\",\"group_by\":\"DIMENSION_PAGE_URL\",\"limit\":10}" \
        "$GRPC" pulse.v1.QueryService/GetMetrics 2>&1 | { head -c 300; cat >/dev/null; } | tr '\n' ' ' | cut -c1-60)"
    secs="$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f s", e - s}')"
    record "$build" "top-10 pages/min, 24 h, $PAGES_WIDE pages (gRPC)" "$before" "$(field_mb "$SERVER_PID" VmHWM)" "$(field_mb "$SERVER_PID" VmRSS)" "$secs  ${out:0:40}"
    started="$(date +%s.%N)"
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://$HTTP/api/v1/metrics?metric=pageviews&range=24h&granularity=minute&group_by=page_url&limit=10" || true)"
    secs="$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f s", e - s}')"
    record "$build" "  the same through /api/v1/metrics" "" "$(field_mb "$SERVER_PID" VmHWM)" "$(field_mb "$SERVER_PID" VmRSS)" "$secs  HTTP $code"
    stop
    fi

    # 2. Wide event types.
    if want types; then
    start "$bin" "pulse_mem_${build}_types"
    "$NEW_BIN" loadgen --grpc-addr "http://$GRPC" --events "$EVENTS" --event-types "$TYPES_WIDE" \
        --days 1 --batch-size 1000 >/dev/null 2>&1 || true
    sleep 2
    before="$(field_mb "$SERVER_PID" VmRSS)"
    started="$(date +%s.%N)"
    out="$(grpcurl -plaintext -max-msg-sz 100000000 -d "{\"metric\":\"METRIC_EVENTS\",\"start\":\"$(ago_iso '-24 hours')\",\"end\":\"$(now_iso)\",\"granularity\":\"GRANULARITY_MINUTE\",\"group_by\":\"DIMENSION_EVENT_TYPE\",\"limit\":10}" \
        "$GRPC" pulse.v1.QueryService/GetMetrics 2>&1 | { head -c 300; cat >/dev/null; } | tr '\n' ' ' | cut -c1-60)"
    secs="$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f s", e - s}')"
    record "$build" "events/min by type, 24 h, $TYPES_WIDE types" "$before" "$(field_mb "$SERVER_PID" VmHWM)" "$(field_mb "$SERVER_PID" VmRSS)" "$secs  ${out:0:40}"
    stop
    fi

    # 3. Big messages on 8 streams.
    if want big; then
    start "$bin" "pulse_mem_${build}_big"
    before="$(field_mb "$SERVER_PID" VmRSS)"
    started="$(date +%s.%N)"
    "$NEW_BIN" loadgen --grpc-addr "http://$GRPC" --events 72000 --data-bytes 8000 --batch-size 450 \
        --messages-per-stream 10 --concurrency 8 >"$WORKDIR/mem-big.out" 2>&1 || true
    secs="$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f s", e - s}')"
    sleep 2
    record "$build" "8 streams of 3.7 MB messages (72k × 8 KB)" "$before" "$(field_mb "$SERVER_PID" VmHWM)" "$(field_mb "$SERVER_PID" VmRSS)" "$secs  $(grep -m1 accepted "$WORKDIR/mem-big.out" | tr -s ' ')"
    stop
    fi
done

echo
printf '%-6s %-44s %9s %9s %9s %s\n' build case "RSS MiB" "peak" "after" "time, answer"
printf '%s\n' "${rows[@]}"
