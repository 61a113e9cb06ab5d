#!/usr/bin/env bash
# Runs the standard matrix against Spool, NATS JetStream and Redis Streams in one run and
# prints one table with the ratios against the targets of docs/perf.md.
#
#   benches/compare.sh [OUT_DIR]
#
# Matrix, for each message size in $SIZES (default "100 1024"), 1 producer, 1 consumer,
# 1 partition, batches of $BATCH (default 1000):
#   produce, durable:    spool --fsync always | redis appendfsync always | nats (no sync setting)
#   produce, page cache: spool --fsync never  | redis appendfsync everysec | nats
#   consume (pre-filled, page cache): spool never | redis everysec | nats
#   e2e, open loop at half of Spool's page-cache produce rate of that size, for $E2E_SECS s
# plus the disk's fdatasync'd sequential bandwidth (dd, 1 MiB writes, each synced) and a
# Spool-only durable run with large batches (16 x 64 KiB = 1 MiB) to compare with it.
#
# Results: OUT_DIR/results.jsonl (one line per run: scenario + spool-bench's JSON),
# OUT_DIR/<run>.log (stderr), OUT_DIR/<run>.cdf.json (latency distribution), table.md.
# Plots: python3 benches/scripts/plot.py OUT_DIR docs/
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES="${SIZES:-100 1024}"
BATCH="${BATCH:-1000}"
COUNT_SMALL="${COUNT_SMALL:-500000}"   # messages of < 1 KiB
COUNT_LARGE="${COUNT_LARGE:-200000}"   # messages of >= 1 KiB
E2E_SECS="${E2E_SECS:-5}"
OUT="${1:-target/bench-compare/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
: >"$OUT/results.jsonl"

# PROFILE=debug (with SKIP_BUILD=1 to use what is built) only checks that the script works.
PROFILE="${PROFILE:-release}"
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --profile "$([ "$PROFILE" = debug ] && echo dev || echo "$PROFILE")" \
        -p spool-broker --bin spoold -p spool-benches --bin spool-bench >&2
fi
BENCH="target/$PROFILE/spool-bench"

NATS="$(benches/peers/nats.sh start)"
REDIS="$(benches/peers/redis.sh start always)"
trap 'benches/peers/nats.sh stop; benches/peers/redis.sh stop' EXIT

# The disk's reference: 256 x 1 MiB writes, each followed by a sync (what a durable append
# of a 1 MiB batch does), and the same streamed with one fdatasync at the end.
DD_DIR="${SPOOL_BENCH_DIR:-${TMPDIR:-/tmp}}"
dd_mbps() {
    # dd prints "... copied, 0.8 s, 335 MB/s"; normalise GB/s and kB/s to MB/s.
    dd if=/dev/zero of="$DD_DIR/spool-bench-dd" bs=1M count=256 "$@" 2>&1 |
        awk '/copied/ {v=$(NF-1); u=$NF; if (u ~ /^GB/) v*=1000; if (u ~ /^kB/) v/=1000; print v}'
    rm -f "$DD_DIR/spool-bench-dd"
}
DD_DSYNC="$(dd_mbps oflag=dsync)"
DD_FDATASYNC="$(dd_mbps conv=fdatasync)"
printf '{"scenario":"disk","target":"dd","size":1048576,"dsync_mb_per_sec":%s,"fdatasync_mb_per_sec":%s}\n' \
    "$DD_DSYNC" "$DD_FDATASYNC" >>"$OUT/results.jsonl"
echo "disk: dd 1 MiB writes with oflag=dsync $DD_DSYNC MB/s; conv=fdatasync $DD_FDATASYNC MB/s" >&2

# run SCENARIO TARGET SIZE [spool-bench args...]
run() {
    local scenario="$1" target="$2" size="$3"
    shift 3
    local name="$scenario-$target-$size" server=()
    case "$target" in
        nats) server=(--server "$NATS") ;;
        redis) server=(--server "$REDIS") ;;
    esac
    echo "== $name: spool-bench $* --target $target" >&2
    local json
    if json="$("$BENCH" "$@" --target "$target" "${server[@]}" --message-size "$size" \
        --batch-size "${RUN_BATCH:-$BATCH}" --json --latency-out "$OUT/$name.cdf.json" 2>"$OUT/$name.log")"; then
        printf '{"scenario":"%s","target":"%s","size":%s,"args":"%s","result":%s}\n' \
            "$scenario" "$target" "$size" "$*" "$json" >>"$OUT/results.jsonl"
        tail -n 2 "$OUT/$name.log" >&2
    else
        echo "FAILED: $name (see $OUT/$name.log)" >&2
        tail -n 5 "$OUT/$name.log" >&2
    fi
}

for size in $SIZES; do
    count="$COUNT_LARGE"
    [ "$size" -lt 1024 ] && count="$COUNT_SMALL"
    run produce-durable spool "$size" produce --count "$count" --fsync always
    run produce-durable redis "$size" produce --count "$count" --fsync always
    run produce-durable nats "$size" produce --count "$count" --fsync always
    run produce-pagecache spool "$size" produce --count "$count" --fsync never
    run produce-pagecache redis "$size" produce --count "$count" --fsync interval
    run produce-pagecache nats "$size" produce --count "$count" --fsync never
    run consume spool "$size" consume --count "$count" --fsync never
    run consume redis "$size" consume --count "$count" --fsync interval
    run consume nats "$size" consume --count "$count" --fsync never
    # Half of Spool's measured page-cache maximum at this size.
    rate="$(python3 - "$OUT/results.jsonl" "$size" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["scenario"] == "produce-pagecache" and r["target"] == "spool" and r["size"] == int(sys.argv[2]):
        print(int(r["result"]["msgs_per_sec"] / 2))
        break
else:
    print(10000)
PY
)"
    run e2e spool "$size" e2e --rate "$rate" --duration "$E2E_SECS" --fsync never
    run e2e redis "$size" e2e --rate "$rate" --duration "$E2E_SECS" --fsync interval
    run e2e nats "$size" e2e --rate "$rate" --duration "$E2E_SECS" --fsync never
done

# Large batches for the bandwidth target: 1 MiB batches of 64 KiB messages, where the
# per-record costs are small, against dd's synced 1 MiB writes above.
RUN_BATCH=16 run produce-durable-large spool 65536 produce --count "${COUNT_HUGE:-20000}" --fsync always

python3 benches/scripts/compare_table.py "$OUT/results.jsonl" | tee "$OUT/table.md"
echo "results in $OUT" >&2
