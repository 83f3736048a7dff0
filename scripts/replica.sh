#!/usr/bin/env bash
# A throwaway PostgreSQL streaming replica, for tests and trials of
# `pulse serve --read-database-url`. Uses the Debian PostgreSQL binaries and
# runs them as the `postgres` OS user.
#
#   scripts/replica.sh start <port> <dir>
#       Clones the primary at 127.0.0.1:$PRIMARY_PORT (default 5432) with
#       `pg_basebackup -R` into <dir>/replica and starts it on <port>.
#       The primary must already allow replication connections from
#       127.0.0.1 (a `replication` line in its pg_hba.conf); this script never
#       changes the primary's configuration. Exits 3 when it does not.
#   scripts/replica.sh start-with-primary <port> <dir>
#       Creates a private primary (initdb, <dir>/primary, on <port>) and a
#       streaming replica of it (<dir>/replica, on <port>+1).
#   scripts/replica.sh stop <port> <dir>
#       Stops every cluster under <dir> and removes <dir>.
#
# REPLICA_APPLY_DELAY (e.g. 300ms) makes the replica lag behind on purpose
# (`recovery_min_apply_delay`), so tests can tell a caught-up read from luck.
#
# On success `start*` prints PRIMARY_URL=… and REPLICA_URL=… (no database
# name) on stdout; logs are in <dir>/*.log.
set -euo pipefail

BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PRIMARY_PORT=${PRIMARY_PORT:-5432}
MARKER=.pulse-replica

usage() {
    echo "usage: $0 start|start-with-primary|stop <port> <dir>" >&2
    exit 2
}

[ $# -eq 3 ] || usage
cmd=$1 port=$2 dir=$3
case $port in '' | *[!0-9]*) usage ;; esac
case $dir in /*) ;; *) echo "<dir> must be an absolute path" >&2; exit 2 ;; esac

# Runs a command as the postgres OS user (we may be root).
as_pg() {
    if [ "$(id -un)" = postgres ]; then
        "$@"
    else
        runuser -u postgres -- "$@"
    fi
}

prepare_dir() {
    if [ -e "$dir" ] && [ ! -e "$dir/$MARKER" ]; then
        echo "$dir exists and was not made by this script; refusing to use it" >&2
        exit 2
    fi
    mkdir -p "$dir"
    touch "$dir/$MARKER"
    chown postgres "$dir"
    chmod 700 "$dir"
}

# Clones 127.0.0.1:$1 into <dir>/replica and starts it on $2.
start_replica() {
    local from=$1 to=$2
    as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$from" -U postgres -D "$dir/replica" \
        -R -X stream -c fast --no-sync
    # A Debian cluster keeps its configuration outside the data directory.
    [ -e "$dir/replica/postgresql.conf" ] || as_pg touch "$dir/replica/postgresql.conf"
    [ -e "$dir/replica/pg_hba.conf" ] ||
        printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' | as_pg tee "$dir/replica/pg_hba.conf" >/dev/null
    as_pg "$BIN/pg_ctl" -D "$dir/replica" -l "$dir/replica.log" -w -t 60 start \
        -o "-p $to -k $dir -c listen_addresses=127.0.0.1 -c hot_standby=on -c fsync=off \
            -c hba_file=$dir/replica/pg_hba.conf -c ident_file=$dir/replica/pg_ident.conf \
            -c recovery_min_apply_delay=${REPLICA_APPLY_DELAY:-0}" >/dev/null
    echo "REPLICA_URL=postgres://postgres@127.0.0.1:$to"
}

case $cmd in
start)
    allowed=$(psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d postgres -Atc \
        "SELECT count(*) FROM pg_hba_file_rules
          WHERE 'replication' = ANY(database) AND type IN ('host', 'hostnossl')
            AND address IN ('127.0.0.1', 'all', 'samehost') AND auth_method = 'trust'")
    if [ "$allowed" = 0 ]; then
        echo "the primary on port $PRIMARY_PORT has no 'host replication … 127.0.0.1/32 trust' line in pg_hba.conf;" \
            "not changing it (use start-with-primary for a private primary)" >&2
        exit 3
    fi
    prepare_dir
    echo "PRIMARY_URL=postgres://postgres@127.0.0.1:$PRIMARY_PORT"
    start_replica "$PRIMARY_PORT" "$port"
    ;;
start-with-primary)
    prepare_dir
    as_pg "$BIN/initdb" -D "$dir/primary" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log"
    # initdb's pg_hba.conf already allows replication from 127.0.0.1 (trust).
    as_pg "$BIN/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -w -t 60 start \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c wal_level=replica -c max_wal_senders=4" >/dev/null
    echo "PRIMARY_URL=postgres://postgres@127.0.0.1:$port"
    start_replica "$port" $((port + 1))
    ;;
stop)
    [ -e "$dir" ] || exit 0
    if [ ! -e "$dir/$MARKER" ]; then
        echo "$dir was not made by this script; not removing it" >&2
        exit 2
    fi
    for cluster in replica primary; do
        if [ -e "$dir/$cluster/postmaster.pid" ]; then
            as_pg "$BIN/pg_ctl" -D "$dir/$cluster" -m immediate -w stop >/dev/null 2>&1 || true
        fi
    done
    rm -rf "$dir"
    ;;
*) usage ;;
esac
