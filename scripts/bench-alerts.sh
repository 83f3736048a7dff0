#!/usr/bin/env bash
# Alert evaluation with many distinct rules (docs/benchmarks.md): RULES rules,
# each with its own (metric, filter, window), against a running server on a
# loaded database, with LIVE_RATE events/s of live traffic; prints the
# evaluator's tick duration (pulse_alert_evaluation_duration_seconds) over
# SECONDS seconds, to compare with --alert-interval (500 ms).
#
#   GRPC=127.0.0.1:50051 HTTP=127.0.0.1:8080 PULSE_BIN=target/release/pulse scripts/bench-alerts.sh
#
# The rules it creates are deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

GRPC="${GRPC:-127.0.0.1:50051}"
HTTP="${HTTP:-127.0.0.1:8080}"
RULES="${RULES:-1000}"
LIVE_RATE="${LIVE_RATE:-1000}"
SECONDS_RUN="${SECONDS_RUN:-30}"
PULSE_BIN="${PULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/pulse}"
command -v grpcurl >/dev/null || { echo "grpcurl is missing: run scripts/setup" >&2; exit 1; }

metric() { curl -s "http://$HTTP/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

types=(pageview click purchase sign_up)
metrics=(METRIC_EVENTS METRIC_UNIQUE_USERS METRIC_PAGEVIEWS METRIC_REVENUE)
ids=()
echo "creating $RULES rules with distinct (metric, filter, window)" >&2
for i in $(seq 0 $((RULES - 1))); do
    m="${metrics[$((i % 4))]}"
    filter=""
    case "$m" in
        METRIC_EVENTS) filter="\"filter\":{\"event_types\":[\"${types[$((i / 4 % 4))]}\"]}," ;;
        METRIC_PAGEVIEWS) filter="\"filter\":{\"page_url\":\"/page/$((i % 50))\"}," ;;
    esac
    body="{\"rule\":{\"name\":\"bench $i\",\"metric\":\"$m\",$filter\"window_seconds\":$((60 + i * 7)),\"comparison\":\"COMPARISON_GREATER_THAN\",\"threshold\":1e12,\"enabled\":true}}"
    id="$(grpcurl -plaintext -d "$body" "$GRPC" pulse.v1.AlertService/CreateAlertRule | sed -n 's/.*"id": "\(.*\)".*/\1/p')"
    ids+=("$id")
done

"$PULSE_BIN" loadgen --grpc-addr "http://$GRPC" --rate "$LIVE_RATE" --events $((LIVE_RATE * (SECONDS_RUN + 20))) \
    --concurrency 2 --batch-size 100 --seed 11 >/dev/null 2>&1 &
live=$!
sleep 5
sum0="$(metric pulse_alert_evaluation_duration_seconds_sum)"
count0="$(metric pulse_alert_evaluation_duration_seconds_count)"
sleep "$SECONDS_RUN"
sum1="$(metric pulse_alert_evaluation_duration_seconds_sum)"
count1="$(metric pulse_alert_evaluation_duration_seconds_count)"
kill "$live" 2>/dev/null || true
awk -v r="$RULES" -v l="$LIVE_RATE" -v s0="$sum0" -v s1="$sum1" -v c0="$count0" -v c1="$count1" -v t="$SECONDS_RUN" 'BEGIN {
    n = c1 - c0
    printf "%d distinct rules, %d events/s live: %d ticks in %d s, mean tick %.0f ms\n", r, l, n, t, (n > 0 ? 1000 * (s1 - s0) / n : 0)
}'
echo "deleting the rules" >&2
for id in "${ids[@]}"; do
    grpcurl -plaintext -d "{\"id\":\"$id\"}" "$GRPC" pulse.v1.AlertService/DeleteAlertRule >/dev/null
done
