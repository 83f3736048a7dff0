#!/usr/bin/env bash
# Fault drills of issue 7: rerunnable proof that Pulse loses no acknowledged
# event under faults. Never touches the PostgreSQL on 5432: a drill that
# restarts PostgreSQL starts a private throwaway cluster on a free port
# (Debian binaries, run as the `postgres` OS user) and removes it at the end,
# pass or fail.
#
#   scripts/faults.sh pg-restart   PostgreSQL restarted (pg_ctl restart -m fast)
#                                  during sustained `pulse loadgen` ingest;
#                                  checks health goes NOT_SERVING and back and
#                                  that stored rows = acknowledged events.
#   scripts/faults.sh tests        the drills written as Rust tests
#                                  (tests/api/faults.rs: SIGKILL, SIGTERM,
#                                  vanishing clients, pool exhaustion).
#   scripts/faults.sh all          both, then a summary.
#
# Environment: PULSE_BIN (default target/debug/pulse, built if missing),
# EVENTS (60000), RATE (events/s, 6000), SEED (42), RESTART_AFTER (s, 3),
# PG_BIN (/usr/lib/postgresql/15/bin).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PULSE_BIN=${PULSE_BIN:-$ROOT/target/debug/pulse}
EVENTS=${EVENTS:-60000}
RATE=${RATE:-6000}
SEED=${SEED:-42}
RESTART_AFTER=${RESTART_AFTER:-3}

as_pg() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ensure_binary() {
    if [ ! -x "$PULSE_BIN" ]; then
        echo "building $PULSE_BIN" >&2
        (cd "$ROOT" && cargo build --bin pulse)
    fi
}

# Health of the gRPC server as one word: SERVING, NOT_SERVING or DOWN.
health() {
    local out
    if out=$(grpcurl -plaintext -max-time 1 "$1" grpc.health.v1.Health/Check 2>/dev/null); then
        case $out in *NOT_SERVING*) echo NOT_SERVING ;; *SERVING*) echo SERVING ;; *) echo UNKNOWN ;; esac
    else
        echo DOWN
    fi
}

pg_restart_drill() {
    ensure_binary
    # Globals, not locals: the EXIT trap runs after this function returns.
    pulse_pid="" poll_pid=""
    dir=$(mktemp -d /tmp/pulse-faults.XXXXXX)
    pg_port=$(free_port)
    grpc_port=$(free_port)
    http_port=$(free_port)
    # shellcheck disable=SC2317  # called from the trap
    cleanup() {
        # shellcheck disable=SC2086  # two pids
        [ -n "$poll_pid" ] && kill $poll_pid 2>/dev/null || true
        if [ -n "$pulse_pid" ]; then
            kill -TERM "$pulse_pid" 2>/dev/null || true
            wait "$pulse_pid" 2>/dev/null || true
        fi
        if [ -e "$dir/pg/postmaster.pid" ]; then
            as_pg "$PG_BIN/pg_ctl" -D "$dir/pg" -m immediate -w stop >/dev/null 2>&1 || true
        fi
        rm -rf "$dir"
    }
    trap cleanup EXIT

    chown postgres "$dir"
    chmod 700 "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/pg" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log"
    local pg_opts="-p $pg_port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off"
    as_pg "$PG_BIN/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w -t 60 start -o "$pg_opts" >/dev/null
    url="postgres://postgres@127.0.0.1:$pg_port/pulse"
    echo "private PostgreSQL on 127.0.0.1:$pg_port ($dir)"

    "$PULSE_BIN" serve --database-url "$url" --grpc-addr "127.0.0.1:$grpc_port" \
        --http-addr "127.0.0.1:$http_port" --health-interval 200ms --log-format json \
        >/dev/null 2>"$dir/pulse.log" &
    pulse_pid=$!
    local addr="127.0.0.1:$grpc_port"
    for _ in $(seq 1 150); do
        [ "$(health "$addr")" = SERVING ] && break
        sleep 0.2
    done
    [ "$(health "$addr")" = SERVING ] || { echo "pulse did not become SERVING" >&2; cat "$dir/pulse.log" >&2; exit 1; }
    echo "pulse serving on $addr (pid $pulse_pid)"

    # Two pollers, so a slow answer of one does not hide a flip from the
    # other: gRPC health, and pulse_database_up from /metrics.
    (
        while true; do
            echo "$(date +%s.%N | cut -c1-14) $(health "$addr")"
            sleep 0.05
        done
    ) >"$dir/health.log" &
    poll_pid=$!
    (
        while true; do
            up=$(curl -s --max-time 1 "http://127.0.0.1:$http_port/metrics" | awk '/^pulse_database_up /{print $2}')
            echo "$(date +%s.%N | cut -c1-14) up=${up:-?}"
            sleep 0.05
        done
    ) >"$dir/up.log" &
    poll_pid="$poll_pid $!"

    echo "loadgen: $EVENTS events at $RATE/s, seed $SEED; PostgreSQL restart after ${RESTART_AFTER}s"
    "$PULSE_BIN" loadgen --grpc-addr "http://$addr" --events "$EVENTS" --rate "$RATE" \
        --seed "$SEED" --concurrency 4 --batch-size 250 --messages-per-stream 4 \
        >"$dir/loadgen.out" 2>"$dir/loadgen.err" &
    local loadgen_pid=$!
    sleep "$RESTART_AFTER"
    local t0 t1
    t0=$(date +%s.%N)
    as_pg "$PG_BIN/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -m fast -w -t 60 restart -o "$pg_opts" >/dev/null
    t1=$(date +%s.%N)
    printf 'PostgreSQL restarted (pg_ctl restart -m fast took %.2fs)\n' "$(echo "$t1 - $t0" | bc)"
    local loadgen_rc=0
    wait "$loadgen_pid" || loadgen_rc=$?
    sleep 0.5
    # shellcheck disable=SC2086  # two pids
    kill $poll_pid 2>/dev/null || true
    # shellcheck disable=SC2086
    wait $poll_pid 2>/dev/null || true
    poll_pid=""

    local result
    result=$(grep '^RESULT' "$dir/loadgen.out" || true)
    echo "loadgen exit $loadgen_rc: $result"
    grep -E '^(streams|failed:)' "$dir/loadgen.out" || true
    field() { echo "$result" | tr ' ' '\n' | awk -F= -v k="$1" '$1==k{print $2}'; }
    local sent accepted duplicates failed acknowledged
    sent=$(field sent)
    accepted=$(field accepted)
    duplicates=$(field duplicates)
    failed=$(field failed)
    acknowledged=$((sent - failed))

    # Health transitions seen by the poller (collapsed runs).
    local transitions up_transitions
    collapse() { awk '{if ($2!=last) {printf "%s%s", sep, $2; sep=" -> "; last=$2}} END{print ""}' "$1"; }
    transitions=$(collapse "$dir/health.log")
    up_transitions=$(collapse "$dir/up.log")
    echo "grpc health:            $transitions"
    echo "pulse_database_up:      $up_transitions"

    psql_q() { psql -h 127.0.0.1 -p "$pg_port" -U postgres -d pulse -Atc "$1"; }
    local stored distinct pv_events pv_rows pu_events pu_rows orphans
    stored=$(psql_q "SELECT count(*) FROM events")
    distinct=$(psql_q "SELECT count(DISTINCT event_id) FROM events")
    pv_events=$(psql_q "SELECT count(*) FROM events e JOIN event_types t USING (event_type_id) WHERE t.name = 'pageview'")
    pv_rows=$(psql_q "SELECT count(*) FROM pageviews")
    pu_events=$(psql_q "SELECT count(*) FROM events e JOIN event_types t USING (event_type_id) WHERE t.name = 'purchase'")
    pu_rows=$(psql_q "SELECT count(*) FROM purchases")
    orphans=$(psql_q "SELECT (SELECT count(*) FROM events e JOIN event_types t USING (event_type_id)
                                WHERE t.name = 'pageview' AND NOT EXISTS (SELECT 1 FROM pageviews p WHERE p.event_id = e.event_id))
                           + (SELECT count(*) FROM events e JOIN event_types t USING (event_type_id)
                                WHERE t.name = 'purchase' AND NOT EXISTS (SELECT 1 FROM purchases p WHERE p.event_id = e.event_id))")
    local server_dups
    server_dups=$(curl -s "http://127.0.0.1:$http_port/metrics" | awk '/^pulse_ingest_events_total\{outcome="duplicate"\}/{print $2}')
    local unavailable
    unavailable=$(grep -c '"code":"Unavailable"' "$dir/pulse.log" || true)
    local lost=$((acknowledged - stored))

    echo
    echo "== pg-restart summary =="
    echo "events generated        $EVENTS"
    echo "acknowledged            $acknowledged (accepted $accepted + duplicates $duplicates; failed $failed)"
    echo "stored (events rows)    $stored (distinct event_id $distinct)"
    echo "details                 pageviews $pv_rows for $pv_events pageview events, purchases $pu_rows for $pu_events purchase events, missing $orphans"
    echo "duplicates on resend    $duplicates (server counter: ${server_dups:-0})"
    echo "UNAVAILABLE log lines   $unavailable"
    echo "lost                    $lost"

    local ok=1
    [ "$loadgen_rc" = 0 ] || ok=0
    [ "$acknowledged" = "$EVENTS" ] || ok=0
    [ "$stored" = "$EVENTS" ] && [ "$distinct" = "$stored" ] || ok=0
    [ $((accepted + duplicates)) = "$EVENTS" ] || ok=0
    [ "$pv_rows" = "$pv_events" ] && [ "$pu_rows" = "$pu_events" ] && [ "$orphans" = 0 ] || ok=0
    case "$transitions|$up_transitions" in *NOT_SERVING*|*up=0*) ;; *) ok=0; echo "health never went NOT_SERVING" ;; esac
    case $transitions in *" SERVING" | SERVING) ;; *) ok=0; echo "health did not end SERVING" ;; esac
    case $up_transitions in *up=1) ;; *) ok=0; echo "pulse_database_up did not end 1" ;; esac
    if [ $ok = 1 ]; then
        echo "pg-restart: PASS"
    else
        echo "pg-restart: FAIL (logs were in $dir)"
        tail -n 20 "$dir/loadgen.err" >&2 || true
        return 1
    fi
}

rust_drills() {
    (cd "$ROOT" && cargo test --test api faults:: -- --nocapture --test-threads 1)
}

case ${1:-} in
pg-restart) pg_restart_drill ;;
tests) rust_drills ;;
all)
    pg=FAIL rust=FAIL
    (pg_restart_drill) && pg=PASS
    rust_drills && rust=PASS
    echo
    echo "== fault drills =="
    echo "pg-restart (script)                      $pg"
    echo "SIGKILL / SIGTERM / vanishing / pool     $rust (tests/api/faults.rs)"
    [ $pg = PASS ] && [ $rust = PASS ]
    ;;
*)
    echo "usage: $0 pg-restart|tests|all" >&2
    exit 2
    ;;
esac
