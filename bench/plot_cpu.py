#!/usr/bin/env python3
"""Turns the JSON of skv_bench_cpu into docs/bench_cpu.png and a markdown table.

    skv_bench_cpu --benchmark_out=bench_cpu.json --benchmark_out_format=json [--benchmark_repetitions=3]
    python3 bench/plot_cpu.py bench_cpu.json --png docs/bench_cpu.png --table table.md

The plot: decode time against context for every configuration (one panel per batch x threads).
The table: time, tokens/s, GB/s and the ratio to the fp16 baseline of the same shape, then the
fast/reference, append/memcpy (block and 32k-token prefill) and fp16/bf16-query ratios of the same run.
"""
import re
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import bench_json  # noqa: E402
from bench_json import load, to_ms  # noqa: E402

DECODE = re.compile(r"^decode/(?P<cfg>[a-z0-9]+)/ctx:(?P<ctx>\d+)/batch:(?P<batch>\d+)/threads:(?P<threads>\d+)")
ORDER = ["fp32", "fp16", "k8v4", "k4v4", "k4v2", "k2v2"]


def decode_results(runs):
    res = {}
    for b in runs:
        m = DECODE.match(b["name"])
        if m:
            key = (m["cfg"], int(m["ctx"]), int(m["batch"]), int(m["threads"]))
            res[key] = b
    return res


def plot(res, png):
    panels = sorted({(k[2], k[3]) for k in res if k[1] >= 4096})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (batch, threads) in zip(axes[0], panels):
        for cfg in ORDER:
            pts = sorted((k[1], to_ms(b)) for k, b in res.items() if k[0] == cfg and k[2] == batch and k[3] == threads
                         and k[1] >= 4096)
            if not pts:
                continue
            style = "--" if cfg.startswith("fp") else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=cfg)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("decode time per step (ms)")
        ax.set_title(f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("skv CPU decode attention: head_dim 128, 8 KV heads, 32 query heads")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def table(ctx_info, runs, res):
    lines = []
    lines.append("| config | context | batch | threads | time (ms) | tokens/s (M) | GB/s | vs fp16 |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (cfg, ctx, batch, threads) in sorted(res, key=lambda k: (k[1], k[2], k[3], ORDER.index(k[0]) if k[0] in ORDER else 9)):
        if ctx < 4096:
            continue
        b = res[(cfg, ctx, batch, threads)]
        base = res.get(("fp16", ctx, batch, threads))
        ratio = f"{to_ms(b) / to_ms(base):.2f}x" if base else ""
        lines.append(f"| {cfg} | {ctx} | {batch} | {threads} | {to_ms(b):.2f} | {b['tokens_per_s'] / 1e6:.2f} | "
                     f"{b['GB_per_s']:.2f} | {ratio} |")
    by_name = {b["name"]: b for b in runs}
    extra = []
    for name, b in by_name.items():
        if name.startswith("reference/"):
            ctx = re.search(r"ctx:(\d+)", name).group(1)
            cfg = name.split("/")[1]
            fast = res.get((cfg, int(ctx), 1, 1))
            if fast:
                extra.append(f"- fast path vs reference, {cfg}, context {ctx}, batch 1, 1 thread: "
                             f"{to_ms(b):.2f} ms vs {to_ms(fast):.3f} ms = **{to_ms(b) / to_ms(fast):.0f}x** faster")
    def rate(b):
        return b["bytes_per_second"]

    block_mem = next((b for n, b in by_name.items() if n.startswith("memcpy/block_input")), None)
    long_mem = next((b for n, b in by_name.items() if n.startswith("memcpy/prefill:")), None)
    plain = next((b for n, b in by_name.items() if n.split("/min_time")[0] == "append/k4v2/block"), None)
    for name, b in by_name.items():
        short = name.split("/min_time")[0]
        if "/prefill:" in name and name.startswith("append/") and long_mem:
            extra.append(f"- {short}: {to_ms(b):.1f} ms, {rate(b) / 1e9:.2f} GB/s of input = "
                         f"**{rate(b) / rate(long_mem):.2f}x** memcpy of the same input ({to_ms(long_mem):.1f} ms, "
                         f"{rate(long_mem) / 1e9:.1f} GB/s)")
        elif (name.startswith("append/") or name.startswith("quantize_block/")) and block_mem:
            more = ""
            if "+clip" in name and plain:
                more = f"; {rate(plain) / rate(b):.1f}x the time of append/k4v2/block"
            extra.append(f"- {short}: {rate(b) / 1e9:.2f} GB/s of input = "
                         f"**{rate(b) / rate(block_mem):.2f}x** memcpy ({rate(block_mem) / 1e9:.1f} GB/s, same 256 KiB){more}")
    typed = re.compile(r"^decode/(?P<cfg>[a-z0-9]+)-(?P<type>fp16|bf16)-io/ctx:(?P<ctx>\d+)/batch:(?P<batch>\d+)/threads:(?P<threads>\d+)")
    for name, b in by_name.items():
        m = typed.match(name)
        if m:
            base = res.get((m["cfg"], int(m["ctx"]), int(m["batch"]), int(m["threads"])))
            if base:
                extra.append(f"- {m['cfg']} with {m['type']} queries and outputs, context {m['ctx']}, batch {m['batch']}, "
                             f"{m['threads']} thread: {to_ms(b):.2f} ms = **{to_ms(b) / to_ms(base):.2f}x** the float call")
    return "\n".join(lines) + "\n\n" + "\n".join(extra) + "\n"


def render(path, png):
    ctx_info, runs = load(path)
    res = decode_results(runs)
    plot(res, png)
    return table(ctx_info, runs, res)


if __name__ == "__main__":
    bench_json.main("docs/bench_cpu.png", render)
