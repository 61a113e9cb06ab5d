#!/usr/bin/env bash
# NATS JetStream for spool-bench: `nats.sh start` installs nats-server from Debian's
# packages when missing, starts it on loopback with a JetStream file store in a temporary
# directory and prints its address; `nats.sh stop` stops it and removes the directory.
#
# nats-server 2.9 acknowledges a publish once the message is written to its file store
# (page cache); it syncs in the background on a timer and has no per-write sync setting.
set -euo pipefail

PORT="${NATS_BENCH_PORT:-14222}"
STATE="${TMPDIR:-/tmp}/spool-bench-nats"   # pid file and data directory

start() {
    if ! command -v nats-server >/dev/null; then
        echo "installing nats-server (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y nats-server >&2 \
            || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y nats-server >&2; }
    fi
    if [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
        echo "nats-server already running (pid $(cat "$STATE/pid"))" >&2
        echo "nats://127.0.0.1:$PORT"
        return
    fi
    rm -rf "$STATE"
    mkdir -p "$STATE/store"
    nats-server -a 127.0.0.1 -p "$PORT" -js -sd "$STATE/store" \
        >"$STATE/log" 2>&1 &
    echo $! >"$STATE/pid"
    for _ in $(seq 1 100); do
        if grep -q "Server is ready" "$STATE/log" 2>/dev/null; then
            echo "nats-server pid $(cat "$STATE/pid"), JetStream store $STATE/store" >&2
            echo "nats://127.0.0.1:$PORT"
            return
        fi
        sleep 0.1
    done
    cat "$STATE/log" >&2
    echo "nats-server did not become ready" >&2
    exit 1
}

stop() {
    if [ -f "$STATE/pid" ]; then
        pid="$(cat "$STATE/pid")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -rf "$STATE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
