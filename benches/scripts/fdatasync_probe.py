#!/usr/bin/env python3
"""Where an `Always` append's fdatasync goes: 1 MiB pwrite + fdatasync into a file that is
(a) extended by each write, (b) preallocated with fallocate (unwritten extents, as the log
does), or (c) overwritten in place (blocks already written). Rounds interleave the three so
the shared disk's noise hits each alike. Prints the median ms per write for each.

Usage: python3 benches/scripts/fdatasync_probe.py [dir] [writes per round] [rounds]
"""
import os
import statistics
import sys
import tempfile
import time

root = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
MIB = 1 << 20
chunk = bytes(i % 253 for i in range(MIB))


def run(path, prepare):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        prepare(fd)
        os.fsync(fd)
        times = []
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, chunk, i * MIB)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
        return times
    finally:
        os.close(fd)
        os.unlink(path)


def extend(fd):
    pass


def fallocate(fd):
    os.posix_fallocate(fd, 0, n * MIB)


def overwrite(fd):
    for i in range(n):
        os.pwrite(fd, b"\0" * MIB, i * MIB)


results = {"extend": [], "fallocate": [], "overwrite": []}
with tempfile.TemporaryDirectory(dir=root, prefix="spool-probe-") as d:
    for _ in range(rounds):
        for name, prep in (("extend", extend), ("fallocate", fallocate), ("overwrite", overwrite)):
            results[name] += run(os.path.join(d, name), prep)
for name, times in results.items():
    med = statistics.median(times) * 1e3
    print(f"{name:10} median {med:.2f} ms per 1 MiB pwrite+fdatasync = {1 / (med / 1e3):.0f} MiB/s"
          f"  (p10 {sorted(times)[len(times) // 10] * 1e3:.2f} ms, p90 {sorted(times)[9 * len(times) // 10] * 1e3:.2f} ms)")
