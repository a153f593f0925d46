"""skv.hf: Hugging Face transformers generating through skv's quantized caches.

    import skv.hf                                   # registers attn_implementation="skv"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="skv")
    cache = skv.hf.SkvCache(model.config, key_bits=4, value_bits=2)
    out = model.generate(ids, cache=cache, max_new_tokens=128)

``SkvCache`` is a ``transformers.Cache`` whose layers hold one ``skv.KVCache`` per sequence of the
batch. With ``attn_implementation="skv"`` the attention itself runs inside skv over the packed
cache: a decode step calls ``KVCache.decode``, a prompt or chunk ``KVCache.attention``; nothing is
dequantized. Left padding is read from the attention mask, so padded positions are neither stored
nor attended. Sliding-window layers (Gemma 2/3, Mistral, Qwen3's window layers) get window caches
whose memory is bounded by the window. Any other attention implementation still works with
``SkvCache`` through a slow fallback: every step returns the whole cache dequantized (and, not
knowing the padding, stores padded positions too). docs/python.md, "Hugging Face transformers".
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import Cache, CacheLayerMixin, get_layer_types_and_kwargs

from . import KVCache

ATTENTION = "skv"
#: Query tokens per call to a window cache's attention (prompts are attended chunk by chunk).
WINDOW_CHUNK = 256
#: Tokens ``crop`` can always take back (rejected draft tokens of assisted decoding).
DEFAULT_ROLLBACK = 64

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _Chunk:
    """What ``SkvLayer.update`` hands the model in place of the key and value tensors: the new
    tokens of this forward, stored by the "skv" attention function, which also sees the mask."""

    __slots__ = ("layer", "k", "v")

    def __init__(self, layer, k, v):
        self.layer, self.k, self.v = layer, k, v

    @property
    def shape(self):  # the new tokens' shape, for code that inspects key.shape
        return self.k.shape


def lloyd_max_options(options: dict, value_bits: int) -> dict:
    """`options` for a cache of `value_bits`: Lloyd-Max levels exist for values of up to 4 bits, so
    lloyd_max_values is dropped for wider values (8-bit values keep evenly spaced levels). The
    fp16_ring and int8_ring sets keep the flag: their 8-bit values are evenly spaced already."""
    if options.get("lloyd_max_values") and value_bits > 4 and not (options.get("fp16_ring")
                                                                   or options.get("int8_ring")):
        return {**options, "lloyd_max_values": None}
    return options


def _window_chunk(chunk: Optional[int], token_by_token: bool) -> int:
    """Queries per attention call of a window cache: `chunk`, or by default 1 when the layer attends
    token by token and WINDOW_CHUNK otherwise. A window cache holds ceil((window + chunk - 1) / P) + 1
    pages of P tokens (no + 1 when P is one key group, 32), so one-token steps hold the least."""
    if chunk is None:
        return 1 if token_by_token else WINDOW_CHUNK
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"skv.hf: window_chunk must be a positive number of queries, got {chunk!r}")
    if token_by_token and chunk != 1:
        raise ValueError(f"skv.hf: token_by_token attends one query at a time; window_chunk={chunk} would "
                         "hold pages no call reads (leave it None, or 1)")
    return chunk


def _load_plan(plan: Union[str, os.PathLike, dict], n_layers: int):
    """(key_bits, value_bits, residual, rotate_values, rotate_keys) per layer from the JSON of
    ``skv plan --json`` (None where a layer omits one)."""
    if not isinstance(plan, dict):
        with open(plan) as f:
            plan = json.load(f)
    try:
        layers = sorted(plan["layers"], key=lambda l: int(l["layer"]))
        pairs = [(int(l["key_bits"]), int(l["value_bits"]), l.get("residual"), l.get("rotate_values"),
                  l.get("rotate_keys")) for l in layers]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"plan: expected the JSON of `skv plan --json` ({{'layers': [{{'layer', 'key_bits', "
                         f"'value_bits'}}, ...]}}): {e!r}") from None
    if [int(l["layer"]) for l in layers] != list(range(n_layers)):
        raise ValueError(f"plan: it must list layers 0..{n_layers - 1} once each, got "
                         f"{[l['layer'] for l in layers]}")
    return pairs


class SkvLayer(CacheLayerMixin):
    """One decoder layer: an ``skv.KVCache`` per sequence of the batch, created on the first update."""

    is_compileable = False
    is_croppable = True

    def __init__(self, key_bits: int, value_bits: int, options: dict, max_tokens: int,
                 sliding_window: Optional[int] = None, fallback: bool = False, layer_idx: int = 0,
                 num_threads: int = 0, token_by_token: bool = False, window_chunk: Optional[int] = None,
                 rope_frequencies: Optional[Sequence[float]] = None):
        super().__init__()
        self.token_by_token = token_by_token
        #: the layer's rotary frequencies, for caches that store keys before the rotary embedding
        self.rope_frequencies = rope_frequencies
        #: queries per attention call of a window cache, and so the longest chunk its pages serve
        self.window_chunk = _window_chunk(window_chunk, token_by_token)
        self.key_bits, self.value_bits, self.options = key_bits, value_bits, options
        self.max_tokens = max_tokens
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.fallback = fallback
        self.layer_idx = layer_idx
        self.num_threads = num_threads
        self.rows: list[KVCache] = []
        self.cumulative_length = 0  # positions seen, padding included: the columns of the 2D mask

    # ---- the CacheLayerMixin interface ------------------------------------------------------------
    def lazy_initialization(self, key_states, value_states):
        batch, heads, _, dim = key_states.shape
        self._check(key_states, value_states)
        window = self.sliding_window if self.is_sliding and not self.fallback else 0
        options = lloyd_max_options(self.options, self.value_bits)
        def make(**rope):
            return [KVCache(self.key_bits, self.value_bits, dim, num_kv_heads=heads,
                            max_tokens=2**31 - 1 if window else self.max_tokens, window=window,
                            max_chunk=self.window_chunk if window else 0, **options, **rope) for _ in range(batch)]
        try:
            self.rows = make()
            if self.rope_frequencies is not None and self.rows[0].pre_rope_keys:
                self.rows = make(rope_frequencies=list(self.rope_frequencies))
        except ValueError as e:
            raise ValueError(f"skv.hf: layer {self.layer_idx}: {e}") from None
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[0] != len(self.rows):
            raise ValueError(f"skv.hf: layer {self.layer_idx}: a batch of {key_states.shape[0]} sequences for a cache "
                             f"of {len(self.rows)} (reset() the cache for a new batch)")
        if self.fallback:
            self.commit(key_states, value_states, None)
            return self.dequantized()
        chunk = _Chunk(self, key_states, value_states)
        return chunk, chunk

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cumulative_length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    # ---- storage ------------------------------------------------------------------------------------
    def _check(self, k, v):
        if k.device.type != "cpu" or v.device.type != "cpu":
            raise ValueError(f"skv.hf: layer {self.layer_idx}: keys and values on {k.device}; skv runs on the CPU")
        if k.dtype not in _DTYPES or v.dtype != k.dtype:
            raise ValueError(f"skv.hf: layer {self.layer_idx}: keys and values of dtype {k.dtype} / {v.dtype}; skv "
                             "takes float32, float16 or bfloat16 (one dtype)")
        if k.dim() != 4 or k.shape != v.shape:
            raise ValueError(f"skv.hf: layer {self.layer_idx}: keys and values must be [batch, kv_heads, tokens, "
                             f"head_dim], got {tuple(k.shape)} and {tuple(v.shape)}")

    @staticmethod
    def _real(real, b, t):
        """Indices of row b's real tokens among the t new ones (None: all of them)."""
        if real is None:
            return None
        r = real[b]
        if bool(r.all()):
            return None
        return r.nonzero().squeeze(-1)

    def commit(self, k, v, real):
        """Appends each row's real new tokens (k, v [B, H_kv, T, D]; real bool [B, T] or None),
        all rows or none: everything that can fail is checked first."""
        self._check(k, v)
        if tuple(k.shape[1:2] + k.shape[3:]) != (self.rows[0].num_kv_heads, self.rows[0].head_dim):
            raise ValueError(f"skv.hf: layer {self.layer_idx}: {k.shape[1]} KV heads of {k.shape[3]} for a cache of "
                             f"{self.rows[0].num_kv_heads} of {self.rows[0].head_dim}")
        t = k.shape[2]
        new = []
        for b, cache in enumerate(self.rows):
            idx = self._real(real, b, t)
            kb, vb = k[b].transpose(0, 1), v[b].transpose(0, 1)  # [T, H_kv, D]: HF's own memory order
            if idx is not None:
                kb, vb = kb.index_select(0, idx), vb.index_select(0, idx)
            if len(cache) + kb.shape[0] > cache.capacity:
                raise ValueError(f"skv.hf: layer {self.layer_idx}: {kb.shape[0]} new tokens past the capacity of "
                                 f"{cache.capacity} (sequence {b} holds {len(cache)}); pass max_tokens= to SkvCache")
            new.append((kb.contiguous(), vb.contiguous()))
        if not all(bool(torch.isfinite(x).all()) for pair in new for x in pair):
            raise ValueError(f"skv.hf: layer {self.layer_idx}: NaN or Inf in the new keys or values")
        done = []
        try:
            for cache, (kb, vb) in zip(self.rows, new):
                _append(cache, kb, vb)
                done.append((cache, kb.shape[0]))
        except ValueError as e:  # out of range for the cache: take back what the other rows stored
            for cache, n in done:
                cache.truncate(len(cache) - n)
            raise ValueError(f"skv.hf: layer {self.layer_idx}: {e}") from None
        self.cumulative_length += t
        return new

    def dequantized(self):
        """The fallback's return value: every row dequantized, [B, H_kv, L, D] of the input dtype."""
        ks, vs = zip(*(c.dequantize() for c in self.rows))
        k = torch.from_numpy(np.stack(ks)).transpose(1, 2).to(self.dtype)
        v = torch.from_numpy(np.stack(vs)).transpose(1, 2).to(self.dtype)
        return k, v

    # ---- the rest of the Cache API ------------------------------------------------------------------
    def reset(self):
        """Forgets everything, the batch size too: the next update starts the caches afresh."""
        self.rows = []
        self.cumulative_length = 0
        self.is_initialized = False

    def check_crop(self, tokens_to_remove: int):
        """Raises ValueError, changing nothing, where crop(tokens_to_remove) cannot be done."""
        if tokens_to_remove > 0:
            raise ValueError("skv.hf: crop takes the negative number of positions to remove, as DynamicLayer does")
        n = -tokens_to_remove
        for b, c in enumerate(self.rows if n else []):
            if len(c) < n:
                raise ValueError(f"skv.hf: layer {self.layer_idx}: crop of {n} positions, but sequence {b} holds "
                                 f"{len(c)} tokens")
            if not c.can_truncate(len(c) - n):
                try:
                    c.truncate(len(c) - n)  # refused, changing nothing: raises with skv's reason
                except ValueError as e:
                    raise ValueError(f"skv.hf: layer {self.layer_idx}: sequence {b} cannot take back {n} positions: "
                                     f"{e} (SkvCache(rollback=...) keeps more)") from None

    def crop(self, tokens_to_remove: int):
        """Forgets the last -tokens_to_remove positions (transformers passes a count <= 0), which must
        be real tokens of every row, as in assisted decoding. Every row is checked first: a refused
        crop changes none."""
        self.check_crop(tokens_to_remove)
        n = -tokens_to_remove
        if n == 0 or not self.is_initialized:
            return
        for c in self.rows:
            c.truncate(len(c) - n)
        self.cumulative_length -= n

    def batch_select_indices(self, indices):
        if not self.is_initialized:
            return
        used, rows = set(), []
        for i in indices.tolist():
            rows.append(self.rows[i] if i not in used else self.rows[i].copy())
            used.add(i)
        self.rows = rows

    def reorder_cache(self, beam_idx):
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int):
        if self.is_initialized:
            self.rows = [c if r == 0 else c.copy() for c in self.rows for r in range(repeats)]

    def offload(self):  # the caches live on the CPU already
        pass

    def prefetch(self):
        pass

    @property
    def memory_bytes(self) -> int:
        return sum(c.memory_bytes for c in self.rows)


class SkvCache(Cache):
    """A ``transformers.Cache`` over skv's quantized caches: one ``skv.KVCache`` per layer and sequence.

    Args:
        config: the model's config (``model.config``); its layer types choose window caches for
            sliding-window layers, and its ``_attn_implementation`` the path: "skv" attends inside
            skv, anything else gets the dequantizing fallback.
        key_bits, value_bits: bits of every layer, unless ``plan`` is given.
        residual, rotate_keys, rotate_values, sinks, clip, lloyd_max_values, fp16_ring, int8_ring: as
            ``skv.KVCache`` (its defaults when None); lloyd_max_values applies to layers with values of up
            to 4 bits.
        plan: the JSON of ``skv plan --json`` (a path or a dict): bits per layer (and ``residual``,
            ``rotate_values`` and ``rotate_keys`` where a layer gives them).
        max_tokens: tokens per sequence of the full-attention layers (default: the config's
            ``max_position_embeddings``; pages are reserved, not touched, until used).
        rollback: tokens ``crop`` can always take back (assisted decoding).
        num_threads: threads of skv's kernels (0: every OpenMP thread).
        token_by_token: a forward of several tokens appends and attends them one at a time, so
            that each query reads the cache exactly as token-by-token generation would (its own
            recent keys still in full precision where the cache type keeps them so). A teacher-forced
            forward over a whole text then measures the generation loop in one call (skv.calibrate
            does); slower than the default chunked prefill, which attends a chunk after storing it.
        window_chunk: queries per attention call of a sliding-window layer (default: 256, or 1 with
            token_by_token). A window cache holds the pages the queries of one chunk read, at most
            ceil((window + window_chunk - 1) / P) + 1 pages of P tokens (KVCache.page_size: 64, or 32
            in the set without rotated keys, whose pages are one key group and need no + 1): a
            smaller chunk holds less memory and attends a prompt in more calls.
        rope_frequencies: each layer's rotary frequencies, ``skv.hf.rope_frequencies(model)``. Layers
            of the set without rotated keys (int8_ring=True, rotate_keys=False) then store keys
            before the rotary embedding, where per-channel groups fit them better; the others ignore
            them. Without them, those layers store keys as the model hands them over.
    """

    def __init__(self, config, key_bits: int = 4, value_bits: int = 2, *, residual: Optional[int] = None,
                 rotate_keys: Optional[bool] = None, rotate_values: Optional[bool] = None,
                 sinks: Optional[int] = None, clip: Optional[bool] = None, lloyd_max_values: Optional[bool] = None,
                 fp16_ring: Optional[bool] = None, int8_ring: Optional[bool] = None, plan: Any = None,
                 max_tokens: Optional[int] = None, rollback: int = DEFAULT_ROLLBACK,
                 num_threads: int = 0, token_by_token: bool = False, window_chunk: Optional[int] = None,
                 rope_frequencies: Optional[Sequence[Sequence[float]]] = None):
        text = config.get_text_config(decoder=True)
        layer_types, layer_kwargs = get_layer_types_and_kwargs(text)
        for i, kind in enumerate(layer_types):
            if kind not in ("full_attention", "sliding_attention"):
                raise ValueError(f"skv.hf: layer {i} is a {kind!r} layer; SkvCache holds full and sliding-window "
                                 "attention layers only")
        n = len(layer_types)
        if rope_frequencies is not None and len(rope_frequencies) != n:
            raise ValueError(f"skv.hf: rope_frequencies holds {len(rope_frequencies)} layers' frequencies; the model "
                             f"has {n} layers (skv.hf.rope_frequencies(model) reads them)")
        window_chunk = _window_chunk(window_chunk, token_by_token)
        bits = _load_plan(plan, n) if plan is not None else [(key_bits, value_bits, None, None, None)] * n
        if max_tokens is None:
            max_tokens = int(getattr(text, "max_position_embeddings", 0) or 32768)
        self.fallback = getattr(config, "_attn_implementation", None) != ATTENTION
        self.num_threads = num_threads
        layers = []
        for i, ((kb, vb, r, rv, rk), kw) in enumerate(zip(bits, layer_kwargs)):
            options = dict(residual=r if r is not None else residual, rotate_keys=rk if rk is not None else rotate_keys,
                           rotate_values=rv if rv is not None else rotate_values, sinks=sinks, clip=clip,
                           lloyd_max_values=lloyd_max_values, fp16_ring=fp16_ring, int8_ring=int8_ring,
                           rollback=rollback)
            window = kw.get("sliding_window") if layer_types[i] == "sliding_attention" else None
            layers.append(SkvLayer(kb, vb, options, max_tokens, window, self.fallback, i, num_threads, token_by_token,
                                   window_chunk, None if rope_frequencies is None else rope_frequencies[i]))
        super().__init__(layers=layers)

    def crop(self, tokens_to_remove: int):
        """Forgets the last -tokens_to_remove positions of every layer; checks every layer first, so
        that a refused crop changes none."""
        for layer in self.layers:
            layer.check_crop(tokens_to_remove)
        super().crop(tokens_to_remove)

    @property
    def memory_bytes(self) -> int:
        """Bytes the caches hold now: pages in use, float32 rings, sinks and rollback copies."""
        return sum(layer.memory_bytes for layer in self.layers)


def rope_frequencies(model) -> list[list[float]]:
    """Each decoder layer's rotary frequencies (the ``inv_freq`` of the model's rotary embedding, any
    rope scaling folded in; ``{layer_type}_inv_freq`` where a model keeps one per layer type, as Gemma 3
    does), for ``SkvCache(..., rope_frequencies=...)``. Raises ValueError for a model without them, or
    whose rotary embedding covers only part of the head (partial rotary: not supported)."""
    text = model.config.get_text_config(decoder=True)
    layer_types, _ = get_layer_types_and_kwargs(text)
    found = {}
    for name, buf in model.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.endswith("inv_freq") and "original" not in leaf:
            found.setdefault(leaf, buf)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    out = []
    for i, kind in enumerate(layer_types):
        buf = found.get(f"{kind}_inv_freq", found.get("inv_freq"))
        if buf is None:
            raise ValueError(f"skv.hf: no rotary frequencies (inv_freq) for layer {i} ({kind}) in the model")
        f = buf.detach().float().cpu().reshape(-1).tolist()
        if len(f) != head_dim // 2:
            raise ValueError(f"skv.hf: layer {i}'s rotary embedding has {len(f)} frequencies for head_dim {head_dim}: "
                             "a partial rotary embedding, which skv does not store keys before")
        out.append(f)
    return out


# ---- the "skv" attention and mask functions ----------------------------------------------------------

def skv_mask(batch_size=None, q_length=None, kv_length=None, q_offset=0, kv_offset=0, mask_function=None,
             attention_mask=None, local_size=None, **kwargs):
    """The mask the "skv" attention receives: the 2D padding mask as it is (None: no padding). skv
    applies causality and the window itself."""
    return attention_mask


def _exact_attention(query, key, value, mask2d, scaling, window, groups):
    """Attention in torch for calls without an SkvCache (use_cache=False): exact, for comparison."""
    b, hq, t, d = query.shape
    k = key.repeat_interleave(groups, dim=1).float()
    v = value.repeat_interleave(groups, dim=1).float()
    s = torch.matmul(query.float(), k.transpose(-1, -2)) * scaling  # [B, Hq, T, L]
    length = k.shape[2]
    qpos = torch.arange(t)[:, None] + (length - t)
    kpos = torch.arange(length)[None, :]
    allowed = kpos <= qpos
    if window:
        allowed = allowed & (kpos > qpos - window)
    allowed = allowed[None, None].expand(b, 1, t, length)
    if mask2d is not None:
        allowed = allowed & mask2d[:, None, None, -length:].bool()
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.matmul(p, v).to(query.dtype).transpose(1, 2).contiguous()


def skv_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                  softcap=None, **kwargs):
    """transformers' attention interface: query [B, Hq, T, D], key / value what the cache's update
    returned, attention_mask what ``skv_mask`` returned. Returns ([B, T, Hq, D], None)."""
    if softcap is not None:
        raise NotImplementedError(f"skv.hf: layer {getattr(module, 'layer_idx', '?')} soft-caps its attention "
                                  f"logits (softcap={softcap}, as Gemma 2 does); skv's kernels do not")
    batch, hq, t, d = query.shape
    scaling = scaling if scaling is not None else d ** -0.5
    mask2d = attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None
    if not isinstance(key, _Chunk):
        window = sliding_window or getattr(module, "sliding_window", None)
        return _exact_attention(query, key, value, mask2d, scaling, window, hq // key.shape[1]), None
    layer = key.layer
    real = mask2d[:, -t:].bool() if mask2d is not None else None
    threads = layer.num_threads
    if layer.is_sliding or (layer.token_by_token and t > 1):
        # A window cache serves chunks of at most window_chunk queries; token_by_token, chunks of one.
        step = 1 if layer.token_by_token else layer.window_chunk
        return _attend_in_steps(layer, query, key, real, scaling, step), None
    layer.commit(key.k, key.v, real)
    out = query.new_zeros(batch, t, hq, d) if real is not None else query.new_empty(batch, t, hq, d)
    qt = query.transpose(1, 2)  # [B, T, Hq, D]: HF's own memory order, so rows below are contiguous
    for b, cache in enumerate(layer.rows):
        idx = SkvLayer._real(real, b, t)
        if idx is None:
            _attend(cache, qt[b], out[b], scaling, threads)
        elif idx.numel():
            tail = idx.numel()
            if bool((idx == torch.arange(t - tail, t)).all()):  # left padding: the real tokens are the last
                _attend(cache, qt[b, t - tail:], out[b, t - tail:], scaling, threads)
            else:
                o = torch.empty(tail, hq, d, dtype=query.dtype)
                _attend(cache, qt[b].index_select(0, idx), o, scaling, threads)
                out[b].index_copy_(0, idx, o)
    return out, None


def _append(cache, k, v):
    """k, v [n, H_kv, D]: one sequence's new tokens (a function of its own so that a profiler can
    tell skv's kernels from the Python around them)."""
    cache.append(k, v)


def _attend(cache, q, out, scaling, threads):
    """q, out [n, Hq, D]: the queries of the cache's last n tokens."""
    q = q.contiguous()
    if q.shape[0] == 1:
        cache.decode(q[0], scale=scaling, num_threads=threads, out=out[0])
    else:
        cache.attention(q, scale=scaling, num_threads=threads, out=out)


def _attend_in_steps(layer, query, chunk, real, scaling, step):
    """Stores and attends the new tokens `step` at a time: each step's queries read the cache as it
    is after that step was appended."""
    batch, hq, t, d = query.shape
    out = query.new_zeros(batch, t, hq, d)
    qt = query.transpose(1, 2)
    for s in range(0, t, step):
        e = min(t, s + step)
        part = real[:, s:e] if real is not None else None
        layer.commit(chunk.k[:, :, s:e], chunk.v[:, :, s:e], part)
        layer.cumulative_length -= e - s  # counted once below, for the whole call
        for b, cache in enumerate(layer.rows):
            idx = SkvLayer._real(part, b, e - s)
            if idx is None:
                _attend(cache, qt[b, s:e], out[b, s:e], scaling, layer.num_threads)
            elif idx.numel():
                o = torch.empty(idx.numel(), hq, d, dtype=query.dtype)
                _attend(cache, qt[b, s:e].index_select(0, idx), o, scaling, layer.num_threads)
                out[b, s:e].index_copy_(0, idx, o)
    layer.cumulative_length += t
    return out


AttentionInterface.register(ATTENTION, skv_attention)
AttentionMaskInterface.register(ATTENTION, skv_mask)

__all__ = ["SkvCache", "SkvLayer", "skv_attention", "skv_mask", "ATTENTION"]
