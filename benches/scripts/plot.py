#!/usr/bin/env python3
"""Plots a benches/compare.sh run as SVG, written by hand (no third-party packages).

usage: plot.py OUT_DIR DOCS_DIR
writes DOCS_DIR/perf-throughput.svg (msgs/s by message size, per scenario and target) and
DOCS_DIR/perf-latency-cdf.svg (e2e latency distribution per target and size).
"""
import json
import math
import os
import sys

COLORS = {"spool": "#1f77b4", "nats": "#2ca02c", "redis": "#d62728"}
TARGETS = ["spool", "nats", "redis"]
SCENARIOS = [("produce-durable", "produce, durable"), ("produce-pagecache", "produce, page cache"),
             ("consume", "consume (page cache)")]


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;")


def text(x, y, s, size=12, anchor="middle", extra=""):
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {extra}>{esc(s)}</text>'


def nice_max(v):
    if v <= 0:
        return 1
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def human(v):
    for unit, d in (("M", 1e6), ("k", 1e3)):
        if v >= d:
            return f"{v/d:g}{unit}"
    return f"{v:g}"


def throughput_svg(runs, path):
    plotted = {sc for sc, _ in SCENARIOS}
    sizes = sorted({s for (sc, _, s) in runs if sc in plotted})
    pw, ph, ml, mt, mb = 300, 260, 60, 40, 50
    width = ml + len(SCENARIOS) * (pw + 30) + 20
    height = mt + ph + mb + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           text(width / 2, 20, "Throughput by message size (messages/s, higher is better)", 15)]
    for i, (sc, title) in enumerate(SCENARIOS):
        x0 = ml + i * (pw + 30)
        vals = [runs[k]["msgs_per_sec"] for k in runs if k[0] == sc]
        top = nice_max(max(vals) if vals else 1)
        out.append(text(x0 + pw / 2, mt - 8, title, 13))
        for t in range(0, 5):
            v = top * t / 4
            y = mt + ph - ph * t / 4
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0+pw}" y2="{y:.1f}" stroke="#ddd"/>')
            out.append(text(x0 - 4, y + 4, human(v), 10, "end"))
        gw = pw / max(1, len(sizes))
        bw = gw * 0.8 / len(TARGETS)
        for j, s in enumerate(sizes):
            gx = x0 + j * gw + gw * 0.1
            for k, tg in enumerate(TARGETS):
                r = runs.get((sc, tg, s))
                if not r:
                    continue
                h = ph * r["msgs_per_sec"] / top
                x = gx + k * bw
                out.append(f'<rect x="{x:.1f}" y="{mt+ph-h:.1f}" width="{bw-2:.1f}" height="{h:.1f}" fill="{COLORS[tg]}"/>')
                out.append(text(x + bw / 2 - 1, mt + ph - h - 3, human(round(r["msgs_per_sec"], -2)), 9))
            out.append(text(x0 + j * gw + gw / 2, mt + ph + 16, f"{s} B", 11))
        out.append(f'<line x1="{x0}" y1="{mt+ph}" x2="{x0+pw}" y2="{mt+ph}" stroke="black"/>')
    lx = ml
    for tg in TARGETS:
        out.append(f'<rect x="{lx}" y="{height-22}" width="12" height="12" fill="{COLORS[tg]}"/>')
        out.append(text(lx + 16, height - 12, tg, 12, "start"))
        lx += 80
    out.append("</svg>")
    open(path, "w").write("\n".join(out))


def cdf_svg(out_dir, sizes, path):
    pw, ph, ml, mt, mb = 380, 260, 60, 40, 60
    width = ml + len(sizes) * (pw + 40) + 20
    height = mt + ph + mb + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           text(width / 2, 20, "e2e latency CDF at half of Spool's page-cache maximum rate (log scale)", 15)]
    for i, s in enumerate(sizes):
        x0 = ml + i * (pw + 40)
        curves = {}
        for tg in TARGETS:
            p = os.path.join(out_dir, f"e2e-{tg}-{s}.cdf.json")
            if os.path.exists(p):
                pts = json.load(open(p))
                if pts:
                    curves[tg] = pts
        allv = [v for c in curves.values() for _, v in c]
        lo = 10 ** math.floor(math.log10(max(1, min(allv)))) if allv else 1
        hi = 10 ** math.ceil(math.log10(max(allv))) if allv else 10
        if hi <= lo:
            hi = lo * 10
        lx = lambda v: x0 + pw * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        ly = lambda q: mt + ph - ph * q / 100
        out.append(text(x0 + pw / 2, mt - 8, f"{s} B messages", 13))
        d = lo
        while d <= hi:
            x = lx(d)
            out.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt+ph}" stroke="#ddd"/>')
            out.append(text(x, mt + ph + 14, f"{d/1000:g} ms" if d >= 1000 else f"{d:g} µs", 10))
            d *= 10
        for q in (0, 50, 90, 99, 100):
            y = ly(q)
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0+pw}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(text(x0 - 4, y + 4, f"{q}%", 10, "end"))
        for tg, pts in curves.items():
            path_d = " ".join(f"{'M' if n == 0 else 'L'}{lx(v):.1f},{ly(q):.1f}" for n, (q, v) in enumerate(pts))
            out.append(f'<path d="{path_d}" fill="none" stroke="{COLORS[tg]}" stroke-width="2"/>')
        out.append(f'<rect x="{x0}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
        out.append(text(x0 + pw / 2, mt + ph + 32, "latency (send to delivery)", 11))
    lx0 = ml
    for tg in TARGETS:
        out.append(f'<rect x="{lx0}" y="{height-22}" width="12" height="12" fill="{COLORS[tg]}"/>')
        out.append(text(lx0 + 16, height - 12, tg, 12, "start"))
        lx0 += 80
    out.append("</svg>")
    open(path, "w").write("\n".join(out))


def main():
    out_dir, docs = sys.argv[1], sys.argv[2]
    runs = {}
    for line in open(os.path.join(out_dir, "results.jsonl")):
        r = json.loads(line)
        if r["scenario"] != "disk":
            runs[(r["scenario"], r["target"], r["size"])] = r["result"]
    throughput_svg(runs, os.path.join(docs, "perf-throughput.svg"))
    sizes = sorted({k[2] for k in runs if k[0] == "e2e"})
    cdf_svg(out_dir, sizes, os.path.join(docs, "perf-latency-cdf.svg"))
    print(f"wrote {docs}/perf-throughput.svg and {docs}/perf-latency-cdf.svg")


if __name__ == "__main__":
    main()
