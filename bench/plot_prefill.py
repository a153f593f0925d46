#!/usr/bin/env python3
"""Turns the prefill part of skv_bench_cpu's JSON into docs/bench_prefill.png and a markdown table.

    skv_bench_cpu --benchmark_filter='^prefill/' --benchmark_repetitions=3 \
        --benchmark_out=prefill.json --benchmark_out_format=json
    python3 bench/plot_prefill.py prefill.json --png docs/bench_prefill.png --table table.md

The plot: effective TFLOP/s against the chunk length, one panel per prefix length, one line per
configuration (dashed: the fp16 and dequantize-then-attend baselines). The table: time, TFLOP/s
and the ratios to the fp16 baseline and to dequantize-then-attend of the same shape, then the
ratios of the targets (512-token chunk over a 32k prefix; 16-token chunk against one decode step).
"""
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import bench_json  # noqa: E402
from bench_json import load, to_ms  # noqa: E402

PREFILL = re.compile(r"^prefill/(?P<cfg>[a-z0-9-]+)/prefix:(?P<prefix>\d+)/chunk:(?P<chunk>\d+)/threads:(?P<threads>\d+)")
ORDER = ["fp16", "k4v2-dequant", "k8v4", "k4v4", "k4v2", "k2v2"]


def load_prefill(path):
    ctx, runs = load(path)
    res = {}
    for b in runs:
        m = PREFILL.match(b["name"])
        if m:
            res[(m["cfg"], int(m["prefix"]), int(m["chunk"]), int(m["threads"]))] = b
    return ctx, res


def order(cfg):
    return ORDER.index(cfg) if cfg in ORDER else len(ORDER)


def plot(res, png):
    panels = sorted({(k[1], k[3]) for k in res})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (prefix, threads) in zip(axes[0], panels):
        for cfg in sorted({k[0] for k in res}, key=order):
            pts = sorted((k[2], b["TFLOP_per_s"]) for k, b in res.items()
                         if k[0] == cfg and k[1] == prefix and k[3] == threads and k[2] > 1)
            if not pts:
                continue
            style = "--" if cfg.startswith("fp") or cfg.endswith("dequant") else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=cfg)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("chunk (query tokens)")
        ax.set_ylabel("effective TFLOP/s")
        ax.set_ylim(bottom=0)
        ax.set_title(f"prefix {prefix} tokens, {threads} thread{'s' if threads > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("skv CPU prefill attention: head_dim 128, 8 KV heads, 32 query heads, causal chunk after a prefix")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def table(res):
    lines = ["| config | prefix | chunk | threads | time (ms) | TFLOP/s | vs fp16 | vs dequantize-then-attend |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(res, key=lambda k: (k[1], k[2], k[3], order(k[0]))):
        cfg, prefix, chunk, threads = key
        b = res[key]
        fp16 = res.get(("fp16", prefix, chunk, threads))
        deq = res.get(("k4v2-dequant", prefix, chunk, threads))
        r16 = f"{to_ms(b) / to_ms(fp16):.2f}x" if fp16 else ""
        rdq = f"{to_ms(deq) / to_ms(b):.2f}x faster" if deq and cfg != "k4v2-dequant" and cfg != "fp16" else ""
        lines.append(f"| {cfg} | {prefix} | {chunk} | {threads} | {to_ms(b):.2f} | {b['TFLOP_per_s']:.3f} | {r16} | {rdq} |")
    notes = []
    for (cfg, prefix, chunk, threads), b in sorted(res.items()):
        if cfg == "k4v2" and prefix == 32768 and chunk == 512:
            fp16 = res.get(("fp16", prefix, chunk, threads))
            deq = res.get(("k4v2-dequant", prefix, chunk, threads))
            if fp16 and deq:
                notes.append(f"- K4V2, 512-token chunk over a 32k prefix, {threads} threads: {to_ms(b) / to_ms(fp16):.2f}x "
                             f"the fp16 time (target <= 0.6x), {to_ms(deq) / to_ms(b):.2f}x faster than "
                             f"dequantize-then-attend (target >= 5x)")
        if cfg == "k4v2" and chunk == 16:
            one = res.get(("k4v2", prefix, 1, threads))
            if one:
                notes.append(f"- K4V2, 16-token chunk vs one decode step, prefix {prefix}, {threads} threads: "
                             f"{to_ms(b):.2f} ms vs {to_ms(one):.2f} ms = {to_ms(b) / to_ms(one):.2f}x (target <= 3x)")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def render(path, png):
    _, res = load_prefill(path)
    plot(res, png)
    return table(res)


if __name__ == "__main__":
    bench_json.main("docs/bench_prefill.png", render)
