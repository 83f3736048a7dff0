#!/usr/bin/env bash
# Every Pulse RPC from the command line with grpcurl (server reflection, no
# .proto files needed). Run it against a server to try them all:
#
#   examples/grpcurl.sh [ADDR]        # default 127.0.0.1:50051
#
# tests/api/dashboard.rs runs it against a test server, so it stays right.
# With API keys configured, add:  -H "authorization: Bearer $PULSE_API_KEY"
set -euo pipefail
ADDR="${1:-127.0.0.1:50051}"
GRPCURL="${GRPCURL:-grpcurl}"
# -emit-defaults: print zero values too ("duplicates": "0"), not leave them out.
g() { "$GRPCURL" -plaintext -emit-defaults "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "list services (reflection)"
g "$ADDR" list

step "describe a service"
g "$ADDR" describe pulse.v1.QueryService

step "Health/Check"
g -d '{"service":"pulse.v1.IngestService"}' "$ADDR" grpc.health.v1.Health/Check

step IngestEvents
# A client stream: one JSON request message after another on stdin. Event ids
# are the idempotency key: sending the same stream again answers duplicates.
pv_id="$(cat /proc/sys/kernel/random/uuid)"
buy_id="$(cat /proc/sys/kernel/random/uuid)"
g -d @ "$ADDR" pulse.v1.IngestService/IngestEvents <<JSON
{"events":[{"event_id":"$pv_id","event_type":"pageview","user_id":"alice","pageview":{"page_url":"/pricing"},"data":{"ref":"newsletter"}}]}
{"events":[{"event_id":"$buy_id","event_type":"purchase","user_id":"alice","purchase":{"product_id":"sku-1","quantity":2,"amount":"19.98"}}]}
JSON

step UpsertUsers
g -d '{"users":[{"user_id":"alice","username":"Alice","email":"alice@example.com"}]}' \
  "$ADDR" pulse.v1.IngestService/UpsertUsers

# The last hour, in UTC (`end` is exclusive).
start="$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:00Z)"
end="$(date -u -d '+1 minute' +%Y-%m-%dT%H:%M:00Z)"

step "GetMetrics (events per minute by type)"
g -d "{\"metric\":\"METRIC_EVENTS\",\"start\":\"$start\",\"end\":\"$end\",
       \"granularity\":\"GRANULARITY_MINUTE\",\"group_by\":\"DIMENSION_EVENT_TYPE\"}" \
  "$ADDR" pulse.v1.QueryService/GetMetrics | head -n 20

step "GetMetrics (top products by revenue)"
g -d "{\"metric\":\"METRIC_REVENUE\",\"start\":\"$start\",\"end\":\"$end\",
       \"granularity\":\"GRANULARITY_TOTAL\",\"group_by\":\"DIMENSION_PRODUCT_ID\",\"limit\":10}" \
  "$ADDR" pulse.v1.QueryService/GetMetrics

step CreateAlertRule
# Fires while any event was seen in the last 5 minutes (for_seconds 0: at once).
created="$(g -d '{"rule":{"name":"grpcurl example","metric":"METRIC_EVENTS","window_seconds":300,
  "comparison":"COMPARISON_GREATER_THAN","threshold":0,"for_seconds":0,"enabled":true}}' \
  "$ADDR" pulse.v1.AlertService/CreateAlertRule)"
echo "$created"
# The rule's id: the first "id" of the answer.
rule_id="$(printf '%s\n' "$created" | sed -n 's/^ *"id": "\([^"]*\)".*/\1/p' | head -n 1)"

step GetAlertRule
g -d "{\"id\":\"$rule_id\"}" "$ADDR" pulse.v1.AlertService/GetAlertRule

step ListAlertRules
g "$ADDR" pulse.v1.AlertService/ListAlertRules

step UpdateAlertRule
# The whole rule is replaced; a rename keeps the alert's state.
g -d "{\"rule\":{\"id\":\"$rule_id\",\"name\":\"grpcurl example (renamed)\",\"metric\":\"METRIC_EVENTS\",
  \"window_seconds\":300,\"comparison\":\"COMPARISON_GREATER_THAN\",\"threshold\":0,\"enabled\":true}}" \
  "$ADDR" pulse.v1.AlertService/UpdateAlertRule

step WatchAlerts
# A server stream: replays notifications after `after_id`, then waits for
# live ones. Reconnect with the last id received to miss nothing. Here it is
# cut after 3 s (grpcurl then exits non-zero: that is expected).
g -max-time 3 -d "{\"rule_ids\":[\"$rule_id\"],\"after_id\":\"0\"}" \
  "$ADDR" pulse.v1.AlertService/WatchAlerts || true

step DeleteAlertRule
g -d "{\"id\":\"$rule_id\"}" "$ADDR" pulse.v1.AlertService/DeleteAlertRule
