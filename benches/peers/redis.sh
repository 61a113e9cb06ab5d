#!/usr/bin/env bash
# Redis Streams for spool-bench: `redis.sh start [always|everysec]` installs redis-server
# from Debian's packages when missing, starts it on loopback with an append-only file in a
# temporary directory (appendfsync as given, default always; RDB snapshots and AOF
# rewrites off) and prints its address; `redis.sh stop` stops it and removes the directory.
#
# Redis acknowledges a write after appending it to the AOF buffer; with `always` the AOF
# is written and fsync'd before the replies of that event-loop pass are sent, with
# `everysec` a background thread fsyncs once a second. spool-bench --fsync switches
# appendfsync per run with CONFIG SET.
set -euo pipefail

PORT="${REDIS_BENCH_PORT:-16379}"
STATE="${TMPDIR:-/tmp}/spool-bench-redis"

start() {
    local fsync="${1:-always}"
    case "$fsync" in always|everysec) ;; *) echo "fsync must be always or everysec" >&2; exit 2 ;; esac
    if ! command -v redis-server >/dev/null; then
        echo "installing redis-server (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server >&2 \
            || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server >&2; }
    fi
    if [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
        echo "redis-server already running (pid $(cat "$STATE/pid"))" >&2
        echo "redis://127.0.0.1:$PORT"
        return
    fi
    rm -rf "$STATE"
    mkdir -p "$STATE/data"
    redis-server --bind 127.0.0.1 --port "$PORT" --dir "$STATE/data" \
        --daemonize yes --pidfile "$STATE/pid" --logfile "$STATE/log" \
        --appendonly yes --appendfsync "$fsync" --save "" \
        --auto-aof-rewrite-percentage 0 --protected-mode yes >&2
    for _ in $(seq 1 100); do
        if redis-cli -p "$PORT" ping 2>/dev/null | grep -q PONG; then
            echo "redis-server pid $(cat "$STATE/pid"), appendfsync $fsync, AOF in $STATE/data" >&2
            echo "redis://127.0.0.1:$PORT"
            return
        fi
        sleep 0.1
    done
    cat "$STATE/log" >&2 || true
    echo "redis-server did not become ready" >&2
    exit 1
}

stop() {
    if [ -f "$STATE/pid" ]; then
        pid="$(cat "$STATE/pid")"
        redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -rf "$STATE"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    *) echo "usage: $0 start [always|everysec] | stop" >&2; exit 2 ;;
esac
