#!/usr/bin/env python3
"""Prints a table of criterion medians for the storage benchmarks (docs/perf.md).

Usage: python3 benches/scripts/summary.py [target/criterion]
Reads each `<bench>/new/benchmark.json` and `estimates.json` that criterion wrote.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")


def human_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def human_rate(bytes_per_s):
    for unit, scale in (("GiB/s", 2**30), ("MiB/s", 2**20), ("KiB/s", 2**10)):
        if bytes_per_s >= scale:
            return f"{bytes_per_s / scale:.3g} {unit}"
    return f"{bytes_per_s:.3g} B/s"


rows = []
for bench in sorted(root.glob("**/new/benchmark.json")):
    meta = json.loads(bench.read_text())
    est = json.loads((bench.parent / "estimates.json").read_text())
    med = est["median"]
    ns = med["point_estimate"]
    lo = med["confidence_interval"]["lower_bound"]
    hi = med["confidence_interval"]["upper_bound"]
    tp = (meta.get("throughput") or {}).get("Bytes")
    rate = human_rate(tp / ns * 1e9) if tp else ""
    rate_lo_hi = f"{human_rate(tp / hi * 1e9)} – {human_rate(tp / lo * 1e9)}" if tp else ""
    rows.append((meta["full_id"], human_time(ns), rate, rate_lo_hi))

print("| benchmark | median time/iter | median throughput | 95% CI of median |")
print("|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
