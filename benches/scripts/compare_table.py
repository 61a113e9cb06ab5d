#!/usr/bin/env python3
"""Prints the comparison table and the target checks of a benches/compare.sh run.

usage: compare_table.py OUT_DIR/results.jsonl
"""
import json
import sys

SCENARIOS = ["produce-durable", "produce-durable-large", "produce-pagecache", "consume", "e2e"]
TARGETS = ["spool", "nats", "redis"]


def load(path):
    runs, disk = {}, None
    for line in open(path):
        r = json.loads(line)
        if r["scenario"] == "disk":
            disk = r
        else:
            runs[(r["scenario"], r["target"], r["size"])] = r["result"]
    return runs, disk


def fmt_rate(r):
    if r is None:
        return "–"
    return f'{r["msgs_per_sec"]/1000:,.1f}k ({r["mb_per_sec"]:,.0f} MB/s)'


def ratio(a, b, key="msgs_per_sec"):
    if a is None or b is None or not b[key]:
        return None
    return a[key] / b[key]


def verdict(ok):
    return "**met**" if ok else "**missed**"


def main():
    runs, disk = load(sys.argv[1])
    sizes = sorted({k[2] for k in runs})
    print("| size | scenario | spool | nats | redis | spool/nats | spool/redis |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        for sc in SCENARIOS:
            res = {t: runs.get((sc, t, size)) for t in TARGETS}
            if not any(res.values()):
                continue
            if sc == "e2e":
                # Same offered rate for all three: compare p99 latency (lower is better).
                cells = [
                    "–" if r is None else
                    f'p50 {r["latency_us"]["p50"]/1000:.1f} / p99 {r["latency_us"]["p99"]/1000:.1f} ms'
                    f' @ {r["msgs_per_sec"]/1000:.1f}k/s'
                    for r in (res[t] for t in TARGETS)
                ]
                rs = []
                for t in ("nats", "redis"):
                    if res["spool"] and res[t] and res["spool"]["latency_us"]["p99"]:
                        rs.append(f'p99 {res[t]["latency_us"]["p99"] / res["spool"]["latency_us"]["p99"]:.2f}x lower')
                    else:
                        rs.append("–")
            else:
                cells = [fmt_rate(res[t]) for t in TARGETS]
                rs = [f"{x:.2f}x" if x else "–" for x in (ratio(res["spool"], res["nats"]), ratio(res["spool"], res["redis"]))]
            print(f"| {size} B | {sc} | " + " | ".join(cells) + " | " + " | ".join(rs) + " |")
    if disk:
        print(f'\ndisk (dd, 256 x 1 MiB): each write synced (oflag=dsync) {disk["dsync_mb_per_sec"]} MB/s; '
              f'streamed then one fdatasync {disk["fdatasync_mb_per_sec"]} MB/s')

    print("\n| target | measured | verdict |")
    print("|---|---|---|")
    g = lambda sc, t, s: runs.get((sc, t, s))
    checks = []
    s1k = 1024
    for other, want in (("redis", 3), ("nats", 2)):
        x = ratio(g("produce-durable", "spool", s1k), g("produce-durable", other, s1k))
        if x is not None:
            checks.append((f"durable produce 1 KiB: spool always ≥ {want}× {other}", f"{x:.2f}×", x >= want))
    for label, sp in (("1000 x 1 KiB", g("produce-durable", "spool", s1k)),
                      ("16 x 64 KiB", g("produce-durable-large", "spool", 65536))):
        if sp and disk:
            frac = sp["mb_per_sec"] / float(disk["dsync_mb_per_sec"])
            checks.append((f"durable produce, 1 MiB batches ({label}) ≥ 80% of dd dsync bandwidth",
                           f'{sp["mb_per_sec"]:.0f} / {disk["dsync_mb_per_sec"]} MB/s = {frac:.0%}', frac >= 0.8))
    for other in ("nats", "redis"):
        x = ratio(g("produce-pagecache", "spool", s1k), g("produce-pagecache", other, s1k))
        if x is not None:
            checks.append((f"page-cache produce 1 KiB: spool never ≥ 3× {other}", f"{x:.2f}×", x >= 3))
    for size in sizes:
        for other, want in (("nats", 3), ("redis", 2)):
            x = ratio(g("consume", "spool", size), g("consume", other, size))
            if x is not None:
                checks.append((f"consume {size} B: spool ≥ {want}× {other}", f"{x:.2f}×", x >= want))
        for other in ("nats", "redis"):
            a, b = g("e2e", "spool", size), g("e2e", other, size)
            if a and b:
                pa, pb = a["latency_us"]["p99"], b["latency_us"]["p99"]
                checks.append((f"e2e {size} B p99: spool ≤ {other}", f"{pa/1000:.1f} vs {pb/1000:.1f} ms", pa <= pb))
    for name, measured, ok in checks:
        print(f"| {name} | {measured} | {verdict(ok)} |")


if __name__ == "__main__":
    main()
