"""skv.calibrate: each layer's sensitivity to its key and value bits, measured by the model's own
next-token distribution in the generation loop, for ``skv plan --sensitivity``.

    import skv.calibrate, skv.hf
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="skv", dtype=torch.float32)
    table = skv.calibrate.layer_sensitivity(model, ids, context=2048)     # ids: a calibration text
    json.dump(table, open("sensitivity.json", "w"))
    #   skv plan --sensitivity sensitivity.json --budget 4.0 --json > plan.json
    cache = skv.hf.SkvCache(model.config, plan="plan.json", **table["options"], rollback=0)

For every layer l and every candidate (key bits, value bits, residual window, and optionally rotated
values), the text is run once teacher-forced with only layer l quantized (an ``skv.hf.SkvLayer``
appending and attending one token at a time, as generation does; every other layer exact), and the
table records the mean
KL(p_exact || p) of the next-token distribution, top-1 agreement and the text's negative
log-likelihood. The planner adds the layers' KLs (a first-order model: small perturbations of
different layers add) and minimizes that sum under a budget of bits HELD per element: what
``memory_bytes`` counts for a cache of ``context`` tokens (codes, scales and zeros, the fp32 sinks,
the fp32 ring holding the partial key group and the residual window), measured here on a real cache
of each candidate and layer shape. docs/calibration.md, "In the generation loop".
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, get_layer_types_and_kwargs

from . import KVCache
from .hf import ATTENTION, WINDOW_CHUNK, SkvLayer, lloyd_max_options, rope_frequencies

FORMAT = "skv-sensitivity/1"
#: Bit pairs measured by default: every pair of 2, 3 and 4 bits, and 8/8 as the near-exact end.
DEFAULT_PAIRS = ((2, 2), (3, 2), (2, 3), (3, 3), (4, 2), (4, 3), (3, 4), (4, 4), (8, 8))
#: Residual windows measured by default (the ones the Python package compiles).
DEFAULT_RESIDUALS = (0, 128)


def candidates(pairs: Iterable = DEFAULT_PAIRS, residuals: Iterable[int] = DEFAULT_RESIDUALS,
               rotate_values: Optional[Iterable[bool]] = None):
    """[(key_bits, value_bits, residual), ...]: every pair at every residual window; with
    rotate_values=(False, True), [(key_bits, value_bits, residual, rotate_values), ...] for both."""
    if rotate_values is None:
        return [(int(k), int(v), int(r)) for r in residuals for k, v in pairs]
    return [(int(k), int(v), int(r), bool(rv)) for rv in rotate_values for r in residuals for k, v in pairs]


def _candidate(c, rotate_values: bool, rotate_keys: bool = True):
    """(key_bits, value_bits, residual, rotate_values, rotate_keys) of a 3-, 4- or 5-tuple candidate
    (the arguments where it omits them)."""
    c = tuple(c)
    if len(c) not in (3, 4, 5):
        raise ValueError("skv.calibrate: a candidate is (key_bits, value_bits, residual[, rotate_values[, "
                         f"rotate_keys]]), got {c}")
    return (int(c[0]), int(c[1]), int(c[2]), bool(c[3]) if len(c) >= 4 else bool(rotate_values),
            bool(c[4]) if len(c) == 5 else bool(rotate_keys))


def held_bits(key_bits: int, value_bits: int, head_dim: int, num_kv_heads: int, context: int, *,
              residual: int = 0, rotate_keys: bool = True, rotate_values: bool = False, sinks: int = 4,
              clip: bool = False, lloyd_max_values: bool = False, fp16_ring: bool = False, int8_ring: bool = False,
              window: int = 0,
              window_chunk: int = 1) -> float:
    """Bits per cached element that a cache of this configuration holds after `context` tokens:
    ``memory_bytes * 8 / (2 * tokens * num_kv_heads * head_dim)``, tokens = min(context, window)
    for a sliding-window layer. Measured on a real cache, so it counts what ``memory_bytes`` counts
    (codes, fp16 scales and zeros, sinks, the ring: fp32, fp16 with fp16_ring, 8-bit rows with
    int8_ring; pages in use). A
    window cache holds the
    pages that `window_chunk` queries read: 1, as in the loop (``SkvCache(token_by_token=True)``)
    and in generation with ``SkvCache(window_chunk=1)``; SkvCache's default for prompts is 256."""
    if context < 1:
        raise ValueError(f"held_bits: context must be at least 1, got {context}")
    if window_chunk < 1:
        raise ValueError(f"held_bits: window_chunk must be at least 1, got {window_chunk}")
    options = lloyd_max_options(dict(residual=residual, rotate_keys=rotate_keys, rotate_values=rotate_values,
                                     sinks=sinks, clip=clip, lloyd_max_values=lloyd_max_values,
                                     fp16_ring=fp16_ring, int8_ring=int8_ring), value_bits)
    cache = KVCache(key_bits, value_bits, head_dim, num_kv_heads=num_kv_heads,
                    max_tokens=2**31 - 1 if window else context, window=window,
                    max_chunk=window_chunk if window else 0, **options)
    rng = np.random.default_rng(0)
    block = rng.standard_normal((WINDOW_CHUNK, num_kv_heads, head_dim)).astype(np.float32)
    done = 0
    while done < context:
        n = min(WINDOW_CHUNK, context - done)
        cache.append(block[:n], block[:n])
        done += n
    tokens = min(context, window) if window else context
    return cache.memory_bytes * 8.0 / (2.0 * tokens * num_kv_heads * head_dim)


def _text_config(model):
    return model.config.get_text_config(decoder=True)


def layer_shapes(model):
    """Per layer: (kind "full" or "sliding", window or 0, num_kv_heads, head_dim)."""
    text = _text_config(model)
    types, kwargs = get_layer_types_and_kwargs(text)
    kv = int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
    hd = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    out = []
    for kind, kw in zip(types, kwargs):
        window = int(kw.get("sliding_window") or 0) if kind == "sliding_attention" else 0
        out.append(("sliding" if window else "full", window, kv, hd))
    return out


def mixed_cache(model, quantized: dict, *, rotate_keys: bool = True, rotate_values: bool = False, sinks: int = 4,
                clip: bool = False, lloyd_max_values: bool = False, fp16_ring: bool = False,
                int8_ring: bool = False, token_by_token: bool = True, max_tokens: Optional[int] = None):
    """A transformers cache whose layers in `quantized` ({layer: (key_bits, value_bits, residual[,
    rotate_values[, rotate_keys]])}) are skv caches and whose other layers are exact (transformers' own
    float layers).
    token_by_token: the skv layers append and attend one token at a time, as generation does.
    Layers of the set without rotated keys store keys before the rotary embedding (the model's
    frequencies, skv.hf.rope_frequencies) where the model's rotary embedding covers the whole head."""
    if getattr(model.config, "_attn_implementation", None) != ATTENTION:
        raise ValueError('skv.calibrate: load the model with attn_implementation="skv" (import skv.hf first)')
    cache = DynamicCache(config=model.config)
    shapes = layer_shapes(model)
    max_tokens = max_tokens or int(getattr(_text_config(model), "max_position_embeddings", 0) or 32768)
    try:
        rope = rope_frequencies(model)
    except ValueError:  # no rotary embedding, or a partial one: keys stored as given
        rope = None
    for layer, cand in quantized.items():
        kb, vb, residual, rv, rk = _candidate(cand, rotate_values, rotate_keys)
        if not 0 <= layer < len(shapes):
            raise ValueError(f"skv.calibrate: layer {layer} of a model with {len(shapes)} layers")
        window = shapes[layer][1] or None
        options = dict(residual=residual, rotate_keys=rk, rotate_values=rv, sinks=sinks, clip=clip,
                       lloyd_max_values=lloyd_max_values, rollback=0, fp16_ring=fp16_ring,
                       int8_ring=int8_ring)
        cache.layers[layer] = SkvLayer(kb, vb, options, max_tokens, window, False, layer, 1, token_by_token,
                                       rope_frequencies=None if rope is None else rope[layer])
    return cache


class _Replay(torch.nn.Module):
    """Stands in for a decoder layer whose output is known: returns it without computing."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


def _hidden(model, ids, cache, replay: Sequence = ()):
    """Final hidden states [T, d] of one teacher-forced forward over ids (cache None: exact
    attention). replay: known outputs of the first decoder layers, which are not recomputed."""
    x = torch.as_tensor(ids, dtype=torch.long)[None]
    layers = model.get_decoder().layers
    saved = [layers[j] for j in range(len(replay))]
    try:
        for j, out in enumerate(replay):
            layers[j] = _Replay(out)
        with torch.no_grad():
            out = model.get_decoder()(input_ids=x, cache=cache, use_cache=cache is not None)
    finally:
        for j, m in enumerate(saved):
            layers[j] = m
    return out.last_hidden_state[0]


def _log_probs(model, h):
    with torch.no_grad():
        logits = model.get_output_embeddings()(h).float()
        cap = getattr(_text_config(model), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return torch.log_softmax(logits, dim=-1)


class Reference:
    """The exact pass over a text: final hidden states, every decoder layer's output (so that a run
    quantizing layer l replays layers 0..l-1 instead of recomputing them) and, with
    keep_log_probs, the next-token log-probabilities (T x vocab floats)."""

    def __init__(self, model, ids, keep_log_probs: bool = False):
        outs = []
        hooks = [m.register_forward_hook(lambda mod, args, out: outs.append(out))
                 for m in model.get_decoder().layers]
        try:
            self.hidden = _hidden(model, ids, None)
        finally:
            for h in hooks:
                h.remove()
        # Layers that return more than the hidden states (older transformers) are not replayed.
        self.layer_outputs = outs if all(isinstance(o, torch.Tensor) for o in outs) else []
        self.log_probs = _log_probs(model, self.hidden[:-1]) if keep_log_probs else None

    def log_probs_at(self, model, s, e):
        return self.log_probs[s:e] if self.log_probs is not None else _log_probs(model, self.hidden[s:e])


def compare(model, ids, hidden, ref: Reference, chunk: int = 256) -> dict:
    """Next-token metrics of `hidden` against the exact pass over positions 0..T-2: mean negative
    log-likelihood of the text, mean KL(p_exact || p) in nats, top-1 agreement."""
    n = len(ids) - 1
    target = torch.as_tensor(ids[1:], dtype=torch.long)
    nll = kl = agree = 0.0
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        lp, rp = _log_probs(model, hidden[s:e]).double(), ref.log_probs_at(model, s, e).double()
        nll -= float(lp[torch.arange(e - s), target[s:e]].sum())
        kl += float((rp.exp() * (rp - lp)).sum())
        agree += float((lp.argmax(-1) == rp.argmax(-1)).sum())
    return {"nll": nll / n, "kl": kl / n, "top1": agree / n}


def run(model, ids, cache, ref: Optional[Reference] = None, first_layer: int = 0) -> dict:
    """One teacher-forced pass of ids through `cache` (a transformers cache; SkvCache with
    token_by_token=True is the generation loop), compared with the exact pass. first_layer: the
    first layer the cache changes (earlier layers are replayed from ref). Returns compare()'s
    metrics plus perplexity, seconds, and the cache's memory_bytes at the end."""
    ref = Reference(model, ids) if ref is None else ref
    t0 = time.time()
    h = _hidden(model, ids, cache, ref.layer_outputs[:first_layer])
    m = compare(model, ids, h, ref)
    m["perplexity"] = math.exp(m["nll"])
    m["seconds"] = time.time() - t0
    m["memory_bytes"] = int(getattr(cache, "memory_bytes", 0) or 0)
    return m


def layer_sensitivity(model, ids: Sequence[int], cands: Optional[Sequence] = None, *, context: int = 2048,
                      layers: Optional[Iterable[int]] = None, sliding_cands: Optional[Sequence] = None,
                      rotate_keys: bool = True, rotate_values: bool = False, sinks: int = 4, clip: bool = False,
                      lloyd_max_values: bool = False, fp16_ring: bool = False, int8_ring: bool = False,
                      progress: Optional[Callable[[str], None]] = None) -> dict:
    """The sensitivity table (JSON-ready) of `model` on the calibration text `ids`: for each layer
    and candidate (key_bits, value_bits, residual[, rotate_values]) (default: candidates(); a
    3-tuple takes the rotate_values argument), the loop's KL with only that layer quantized, and the
    candidate's bits held per element at `context` tokens for that layer's shape. sliding_cands: the
    candidates of sliding-window layers, if others (a residual window costs more bits in a layer
    that holds only its window). The options (rotate_keys, rotate_values, sinks, clip,
    lloyd_max_values, fp16_ring, int8_ring) are recorded in the table, for SkvCache and skv.KVCache to be built with;
    every candidate records its own rotate_values and rotate_keys as well (merge_tables joins tables
    that differ in those two)."""
    cands = [_candidate(c, rotate_values, rotate_keys)[:4] for c in (candidates() if cands is None else cands)]
    sliding_cands = (cands if sliding_cands is None
                     else [_candidate(c, rotate_values, rotate_keys)[:4] for c in sliding_cands])
    if len(ids) < 33:
        raise ValueError(f"skv.calibrate: {len(ids)} calibration tokens; at least 33 are needed")
    shapes = layer_shapes(model)
    layers = list(range(len(shapes))) if layers is None else sorted(set(int(l) for l in layers))
    opts = dict(rotate_keys=rotate_keys, rotate_values=rotate_values, sinks=sinks, clip=clip,
                lloyd_max_values=lloyd_max_values, fp16_ring=fp16_ring, int8_ring=int8_ring)
    held = {}
    for l in layers:
        _, window, kv, hd = shapes[l]
        for kb, vb, r, rv in (sliding_cands if window else cands):
            if (window, kv, hd, kb, vb, r, rv) not in held:
                held[(window, kv, hd, kb, vb, r, rv)] = held_bits(kb, vb, hd, kv, context, residual=r, window=window,
                                                                  **{**opts, "rotate_values": rv})
    t0 = time.time()
    ref = Reference(model, ids, keep_log_probs=True)
    ref_nll = compare(model, ids, ref.hidden, ref)["nll"]
    table = {
        "format": FORMAT,
        "model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
        "architecture": type(model).__name__,
        "tokens": len(ids),
        "context": context,
        "options": opts,
        "objective": "mean KL(p_exact || p) of the next-token distribution, nats, one layer quantized at a time",
        "reference_perplexity": math.exp(ref_nll),
        "layers": [],
    }
    for l in layers:
        kind, window, kv, hd = shapes[l]
        tokens = min(context, window) if window else context
        entry = {"layer": l, "kind": kind, "window": window, "kv_heads": kv, "head_dim": hd,
                 "elements": 2 * tokens * kv * hd, "candidates": []}
        for kb, vb, r, rv in (sliding_cands if window else cands):
            m = run(model, ids, mixed_cache(model, {l: (kb, vb, r, rv)}, **opts), ref, first_layer=l)
            entry["candidates"].append({"key_bits": kb, "value_bits": vb, "residual": r, "rotate_values": rv,
                                        "rotate_keys": rotate_keys, "held_bits": held[(window, kv, hd, kb, vb, r, rv)],
                                        "kl": m["kl"], "top1": m["top1"], "nll": m["nll"]})
            if progress:
                progress(f"layer {l} k{kb}v{vb} r{r}{' rotv' if rv else ''}{'' if rotate_keys else ' unrotk'}: "
                         f"KL {m['kl']:.3e} "
                         f"top-1 {100 * m['top1']:.2f}% "
                         f"({m['seconds']:.1f} s, {time.time() - t0:.0f} s in all)")
        table["layers"].append(entry)
    table["seconds"] = time.time() - t0
    return table


def plan_cache(model, plan: dict, options: dict, *, token_by_token: bool = True):
    """The mixed cache of a plan dict (``skv plan --json``): every layer quantized with its pair,
    residual, rotate_values and rotate_keys (the options' where a layer omits them), exact where a layer
    has ``"key_bits": 0`` (not quantized)."""
    rv = bool(options.get("rotate_values", False))
    rk = bool(options.get("rotate_keys", True))
    quantized = {int(l["layer"]): (int(l["key_bits"]), int(l["value_bits"]), int(l.get("residual", 0)),
                                   bool(l.get("rotate_values", rv)), bool(l.get("rotate_keys", rk)))
                 for l in plan["layers"] if int(l["key_bits"]) > 0}
    return mixed_cache(model, quantized, token_by_token=token_by_token, **options)


def merge_tables(*tables: dict) -> dict:
    """One sensitivity table from several measured on the same model, text and context with
    options that differ in rotate_values and rotate_keys only: every layer's candidates of all of
    them, each marked with its rotate_values and rotate_keys, so that the planner chooses per layer.
    Raises ValueError when the tables do not match."""
    if not tables:
        raise ValueError("skv.calibrate.merge_tables: no tables")
    first = tables[0]
    key = ("format", "model", "tokens", "context")
    per_candidate = ("rotate_values", "rotate_keys")
    base_opts = {k: v for k, v in first["options"].items() if k not in per_candidate}
    for t in tables[1:]:
        if any(t.get(k) != first.get(k) for k in key) or \
                {k: v for k, v in t["options"].items() if k not in per_candidate} != base_opts:
            raise ValueError("skv.calibrate.merge_tables: the tables differ in more than rotate_values and "
                             f"rotate_keys ({', '.join(key)} and the other options must match)")
        if [l["layer"] for l in t["layers"]] != [l["layer"] for l in first["layers"]]:
            raise ValueError("skv.calibrate.merge_tables: the tables list different layers")
    merged = {k: v for k, v in first.items() if k not in ("layers", "seconds")}
    merged["options"] = {**base_opts, "rotate_values": False, "rotate_keys": True}
    merged["seconds"] = sum(t.get("seconds", 0.0) for t in tables)
    merged["layers"] = []
    for rows in zip(*(t["layers"] for t in tables)):
        layer = {k: v for k, v in rows[0].items() if k != "candidates"}
        layer["candidates"], seen = [], set()
        for t, row in zip(tables, rows):
            rv = bool(t["options"].get("rotate_values", False))
            rk = bool(t["options"].get("rotate_keys", True))
            for c in row["candidates"]:
                c = {**c, "rotate_values": bool(c.get("rotate_values", rv)),
                     "rotate_keys": bool(c.get("rotate_keys", rk))}
                name = (c["key_bits"], c["value_bits"], c.get("residual", 0), c["rotate_values"], c["rotate_keys"])
                if name in seen:
                    raise ValueError(f"skv.calibrate.merge_tables: layer {row['layer']}: candidate {name} twice")
                seen.add(name)
                layer["candidates"].append(c)
        merged["layers"].append(layer)
    return merged


def held_bits_of(model, cache, tokens: int) -> float:
    """memory_bytes * 8 per element of the whole cache after `tokens` tokens: every layer's
    elements are 2 * min(tokens, window) * kv_heads * head_dim (exact layers count 32 bits)."""
    total_bits, elements = 0.0, 0
    for (kind, window, kv, hd), layer in zip(layer_shapes(model), cache.layers):
        n = 2 * (min(tokens, window) if window else tokens) * kv * hd
        elements += n
        total_bits += layer.memory_bytes * 8.0 if isinstance(layer, SkvLayer) else 32.0 * n
    return total_bits / elements


__all__ = ["FORMAT", "DEFAULT_PAIRS", "DEFAULT_RESIDUALS", "candidates", "held_bits", "layer_shapes",
           "mixed_cache", "Reference", "compare", "run", "layer_sensitivity", "plan_cache", "merge_tables",
           "held_bits_of"]
