#!/usr/bin/env bash
# Ingest acknowledgement latency while a notification burst goes out
# (docs/benchmarks.md): a fresh database and server; `pulse loadgen` at
# RATE events/s for SECONDS_RUN s alone, then again while
# scripts/bench_notify.py holds SUBSCRIBERS WatchAlerts streams and makes
# RULES rules fire and resolve (2 × RULES notifications to each).
# Prints loadgen's ack latency for both runs and the burst's delivery times.
#
#   PULSE_BIN=target/release/pulse scripts/bench-notify.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PULSE_BIN="${PULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/pulse}"
PYTHON="${PULSE_PYTHON:-.venv/bin/python3}"
RATE="${RATE:-5000}"
SECONDS_RUN="${SECONDS_RUN:-30}"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
RULES="${RULES:-1100}"
ADMIN_URL="${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DB="pulse_notify"
GRPC=127.0.0.1:50561
HTTP=127.0.0.1:8561
base="${ADMIN_URL%/*}"

psql -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
"$PULSE_BIN" serve --database-url "$base/$DB" --grpc-addr "$GRPC" --http-addr "$HTTP" >/var/tmp/bench-notify-serve.log 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://$HTTP/readyz" >/dev/null && break; sleep 0.2; done

load() {
    "$PULSE_BIN" loadgen --grpc-addr "http://$GRPC" --rate "$RATE" --events $((RATE * SECONDS_RUN)) \
        --concurrency 4 --batch-size 100 --seed "$1" 2>&1 | grep -E '^(ack latency|RESULT)'
}
echo "== loadgen alone, $RATE events/s for $SECONDS_RUN s"
load 1
echo "== the same while $((2 * RULES)) notifications go to $SUBSCRIBERS subscribers"
"$PYTHON" scripts/bench_notify.py --target "$GRPC" --subscribers "$SUBSCRIBERS" --rules "$RULES" \
    >/var/tmp/bench-notify.out 2>/var/tmp/bench-notify.err &
burst=$!
until grep -q creating /var/tmp/bench-notify.err 2>/dev/null; do
    kill -0 $burst 2>/dev/null || { cat /var/tmp/bench-notify.err; exit 1; }
    sleep 0.5
done
load 2
wait $burst || { cat /var/tmp/bench-notify.err; exit 1; }
cat /var/tmp/bench-notify.out
