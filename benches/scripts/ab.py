#!/usr/bin/env python3
"""Side-by-side runs of spool-bench builds (or any commands printing spool-bench's --json).

usage: ab.py N 'label=command' ['label=command' ...]

Runs every command N times, interleaved (A B A B ...), appending --json to each, and prints
per label the median msgs/s (with min and max), the median CPU per message (user + system
time of the command and the children it waited for, e.g. the spoold that spool-bench
starts, divided by messages) and the median p50/p99 latency. CPU per message is far steadier
than throughput on shared machines: it does not depend on how much of the machine a run got.

To compare two builds, copy each build's spoold and spool-bench side by side into its own
directory (spool-bench starts the spoold next to it), e.g.
    ab.py 5 "old=/tmp/old/spool-bench produce --count 500000 --message-size 1024 --fsync never" \\
            "new=/tmp/new/spool-bench produce --count 500000 --message-size 1024 --fsync never"
"""
import json
import resource
import statistics
import subprocess
import sys


def main():
    n = int(sys.argv[1])
    cases = [a.split("=", 1) for a in sys.argv[2:]]
    results = {label: [] for label, _ in cases}
    for _ in range(n):
        for label, cmd in cases:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run(cmd + " --json", shell=True, capture_output=True, text=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            try:
                r = json.loads(out.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                print("FAILED", label, out.stderr[-500:])
                continue
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            lat = r["latency_us"]
            results[label].append(
                (r["msgs_per_sec"], cpu * 1e6 / r["messages"], lat["p50"] / 1000, lat["p99"] / 1000)
            )
    for label, runs in results.items():
        if not runs:
            continue
        med = lambda k: statistics.median(x[k] for x in runs)  # noqa: E731
        print(
            "%-16s n=%d  median %10.0f msg/s (min %.0f max %.0f)  cpu %.2f us/msg  p50 %.1f ms p99 %.1f ms"
            % (label, len(runs), med(0), min(x[0] for x in runs), max(x[0] for x in runs), med(1), med(2), med(3))
        )


if __name__ == "__main__":
    main()
