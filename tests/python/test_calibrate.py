"""skv.calibrate and SkvCache(token_by_token=True): the generation loop in one forward, bits held,
and the sensitivity table, on tiny random-weight models (Llama, and Gemma 3 with sliding-window
layers); nothing is downloaded."""
import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import skv  # noqa: E402
import skv.calibrate as calibrate  # noqa: E402
import skv.hf  # noqa: E402
from conftest import compiled_with  # noqa: E402
from test_hf import WINDOW, make, next_token_logprobs, prompt  # noqa: E402


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_token_by_token_forward_is_the_generation_loop(name):
    """One forward over the text with token_by_token=True makes the same cache calls as feeding one
    token per forward: the log-probabilities agree to float rounding (the projections are batched),
    far closer than chunked prefill, whose queries read their own chunk already quantized."""
    model = make(name)
    ids = prompt(150, 5)
    kw = dict(key_bits=4, value_bits=4, residual=0, rotate_keys=False, sinks=0)
    loop = next_token_logprobs(model, skv.hf.SkvCache(model.config, **kw), ids, chunk=1)
    one = next_token_logprobs(model, skv.hf.SkvCache(model.config, token_by_token=True, **kw), ids, chunk=150)
    chunked = next_token_logprobs(model, skv.hf.SkvCache(model.config, **kw), ids, chunk=150)
    err_one = float((loop - one).abs().max())
    err_chunked = float((loop - chunked).abs().max())
    assert err_one < 1e-3, err_one
    assert err_chunked > 10 * err_one, (err_one, err_chunked)


@pytest.mark.parametrize("window,chunk", [(0, 1), (40, 1), (40, 256)])
def test_held_bits_counts_what_memory_bytes_counts(window, chunk):
    # k4v2 at head_dim 64 over 2 KV heads: 4 + 2 bits of codes, fp16 scale + zero per 32-token key
    # group (1 bit) and per 64-channel value group (0.5 bit); with 4 fp32 sinks and a ring of up to
    # 32 + residual tokens in fp32 on top, over tokens = min(context, window).
    context = 1000
    got = calibrate.held_bits(4, 2, 64, 2, context, residual=0, window=window, window_chunk=chunk)
    cache = skv.KVCache(4, 2, 64, num_kv_heads=2, max_tokens=2**31 - 1 if window else context, residual=0, rotate_keys=True,
                        sinks=4, window=window, max_chunk=chunk if window else 0)
    x = np.zeros((context, 2, 64), np.float32)
    for s in range(0, context, 256):
        cache.append(x[s:s + 256], x[s:s + 256])
    tokens = min(context, window) if window else context
    assert got == cache.memory_bytes * 8 / (2 * tokens * 2 * 64)
    if not window:
        # codes and fp16 metadata are 3.75 bits per element; the fp32 sinks (4 tokens), the ring (up
        # to 32 tokens) and the unfilled part of the last 64-token page add at most 100 tokens of fp32
        assert 3.75 < got < 3.75 + 32 * 100 / context
    else:
        # a window cache holds the pages its chunk's queries read: (40 + chunk - 2) // 64 + 2 pages
        pages = (window + chunk - 2) // 64 + 2
        page_bits = 64 * 2 * 64 * 6 + (2 * 64 * 2 + 64 * 2) * 2 * 16  # codes; fp16 scale + zero per group
        assert got * (2 * window * 2 * 64) - pages * page_bits == (4 + 32) * 2 * 2 * 64 * 32
    with pytest.raises(ValueError):
        calibrate.held_bits(4, 2, 64, 2, 0)
    # the ring and the sinks ((128 + 32 + 4) tokens x 2 heads, keys and values) cost 32, 16 or
    # 8 + 32 / 64 bits per element: fp32, fp16_ring or int8_ring, the pages alike
    opts = dict(residual=128, rotate_values=True, lloyd_max_values=True)
    wide, byte = (calibrate.held_bits(3, 3, 64, 2, 2048, **opts, **o) for o in ({}, {"int8_ring": True}))
    area = 2 * (128 + 32 + 4) * 2 * 64 / (2 * 2048 * 2 * 64)  # elements of the area per element held
    assert wide - byte == pytest.approx(area * (32 - 8.5), rel=1e-12)
    if compiled_with(fp16_ring=True):
        half = calibrate.held_bits(3, 3, 64, 2, 2048, **opts, fp16_ring=True)
        assert wide - half == pytest.approx(area * 16, rel=1e-12)
    with pytest.raises(ValueError):
        calibrate.held_bits(4, 2, 64, 2, 100, window=40, window_chunk=0)


def test_mixed_cache_quantizes_only_the_layers_it_names():
    model = make("llama")
    ids = prompt(120, 1)[0].tolist()
    ref = calibrate.Reference(model, ids, keep_log_probs=True)
    exact = calibrate.run(model, ids, calibrate.mixed_cache(model, {}), ref)
    assert exact["kl"] < 1e-9 and exact["top1"] == 1.0
    one = calibrate.run(model, ids, calibrate.mixed_cache(model, {2: (2, 2, 0)}), ref)
    replayed = calibrate.run(model, ids, calibrate.mixed_cache(model, {2: (2, 2, 0)}), ref, first_layer=2)
    assert one["kl"] > 1e-5
    # layers 0 and 1 replayed from the exact pass give the same result as recomputing them
    assert replayed["kl"] == pytest.approx(one["kl"], rel=1e-6, abs=1e-12)
    everything = calibrate.run(model, ids, calibrate.mixed_cache(model, {l: (2, 2, 0) for l in range(4)}), ref)
    assert everything["kl"] > one["kl"]
    with pytest.raises(ValueError, match="layer 7"):
        calibrate.mixed_cache(model, {7: (4, 2, 0)})
    with pytest.raises(ValueError, match='attn_implementation="skv"'):
        calibrate.mixed_cache(make("llama", "eager"), {0: (4, 2, 0)})


def test_layer_sensitivity_table(tmp_path):
    model = make("gemma3")  # sliding, full, sliding, full
    ids = prompt(100, 3)[0].tolist()
    cands = calibrate.candidates([(2, 2), (4, 4), (8, 8)], [0, 128])
    sliding = calibrate.candidates([(2, 2), (4, 4), (8, 8)], [0])
    t = calibrate.layer_sensitivity(model, ids, cands, context=512, sliding_cands=sliding)
    assert t["format"] == calibrate.FORMAT and t["context"] == 512 and t["tokens"] == 100
    assert t["options"] == {"rotate_keys": True, "rotate_values": False, "sinks": 4, "clip": False,
                            "lloyd_max_values": False, "fp16_ring": False, "int8_ring": False}
    assert [l["kind"] for l in t["layers"]] == ["sliding", "full", "sliding", "full"]
    for l in t["layers"]:
        names = {(c["key_bits"], c["value_bits"], c["residual"]): c for c in l["candidates"]}
        assert len(names) == (3 if l["kind"] == "sliding" else 6)
        tokens = WINDOW if l["kind"] == "sliding" else 512
        assert l["elements"] == 2 * tokens * 2 * 64
        # more bits: more held, less KL (8/8 is near exact)
        assert names[(2, 2, 0)]["held_bits"] < names[(4, 4, 0)]["held_bits"] < names[(8, 8, 0)]["held_bits"]
        assert names[(8, 8, 0)]["kl"] < names[(4, 4, 0)]["kl"] < names[(2, 2, 0)]["kl"]
        assert names[(8, 8, 0)]["kl"] < 1e-4 and names[(8, 8, 0)]["top1"] >= 0.97
        if l["kind"] == "full":  # the residual window costs held bits and removes error
            assert names[(2, 2, 128)]["held_bits"] > names[(2, 2, 0)]["held_bits"]
            assert names[(2, 2, 128)]["kl"] < names[(2, 2, 0)]["kl"]
    assert math.isfinite(t["reference_perplexity"])
    json.dumps(t)  # JSON-ready


def test_rotated_values_are_a_candidate_and_tables_merge():
    model = make("llama")
    ids = prompt(80, 4)[0].tolist()
    pairs = [(3, 2)]
    a = calibrate.layer_sensitivity(model, ids, calibrate.candidates(pairs, [0]), context=256, layers=[1])
    b = calibrate.layer_sensitivity(model, ids, calibrate.candidates(pairs, [0]), context=256, layers=[1],
                                    rotate_values=True)
    both = calibrate.layer_sensitivity(model, ids, calibrate.candidates(pairs, [0], rotate_values=(False, True)),
                                       context=256, layers=[1])
    merged = calibrate.merge_tables(a, b)
    assert merged["options"]["rotate_values"] is False and b["options"]["rotate_values"] is True
    got = [(c["rotate_values"], c["kl"], c["held_bits"]) for c in merged["layers"][0]["candidates"]]
    want = [(c["rotate_values"], c["kl"], c["held_bits"]) for c in both["layers"][0]["candidates"]]
    assert [g[0] for g in got] == [w[0] for w in want] == [False, True]
    for g, w in zip(got, want):  # the same passes, measured alone or together
        assert g[1] == pytest.approx(w[1], rel=1e-6, abs=1e-12) and g[2] == w[2]
    assert got[0][2] == got[1][2]  # the rotation holds no memory
    assert got[0][1] != got[1][1]  # and reached the cache
    with pytest.raises(ValueError, match="twice"):
        calibrate.merge_tables(a, a)
    with pytest.raises(ValueError, match="differ"):
        calibrate.merge_tables(a, {**b, "context": 512})
    with pytest.raises(ValueError, match="candidate is"):
        calibrate.mixed_cache(model, {0: (3, 2)})


def test_unrotated_keys_are_a_candidate_and_tables_merge():
    # The 8-bit-ring set with and without the key rotation (option sets 6 and 7): a table each, merged,
    # and a plan layer that names rotate_keys gets it.
    model = make("llama")
    ids = prompt(80, 5)[0].tolist()
    opts = dict(rotate_values=True, lloyd_max_values=True, int8_ring=True)
    cands = calibrate.candidates([(3, 2)], [0])
    a = calibrate.layer_sensitivity(model, ids, cands, context=256, layers=[1, 2], **opts)
    b = calibrate.layer_sensitivity(model, ids, cands, context=256, layers=[1, 2], rotate_keys=False, **opts)
    assert [c["rotate_keys"] for l in b["layers"] for c in l["candidates"]] == [False, False]
    merged = calibrate.merge_tables(a, b)
    assert merged["options"]["rotate_keys"] is True
    for l in merged["layers"]:
        got = [(c["rotate_keys"], c["held_bits"], c["kl"]) for c in l["candidates"]]
        assert [g[0] for g in got] == [True, False]
        assert got[1][1] < got[0][1]  # the rotation holds no memory; set 7's pages of 32 tokens hold less
        assert got[0][2] != got[1][2]  # and reached the cache
    with pytest.raises(ValueError, match="twice"):
        calibrate.merge_tables(b, b)
    with pytest.raises(ValueError, match="differ"):
        calibrate.merge_tables(a, {**b, "options": {**b["options"], "int8_ring": False}})
    plan = {"layers": [{"layer": l, "key_bits": 3, "value_bits": 2, "rotate_values": True, "rotate_keys": l != 2}
                       for l in range(4)]}
    cache = calibrate.plan_cache(model, plan, merged["options"])
    calibrate.run(model, ids, cache)
    assert [l.options["rotate_keys"] for l in cache.layers] == [True, True, False, True]
    assert [l.rows[0].rotate_keys for l in cache.layers] == [True, True, False, True]


def test_plan_cache_follows_the_plan():
    model = make("llama")
    plan = {"layers": [{"layer": 0, "key_bits": 2, "value_bits": 2, "residual": 0},
                       {"layer": 1, "key_bits": 4, "value_bits": 2, "residual": 128},
                       {"layer": 2, "key_bits": 0, "value_bits": 0},
                       {"layer": 3, "key_bits": 3, "value_bits": 3, "rotate_values": True}]}
    cache = calibrate.plan_cache(model, plan, {"rotate_keys": True, "sinks": 4})
    ids = prompt(64, 2)[0].tolist()
    calibrate.run(model, ids, cache)
    kinds = [(l.key_bits, l.value_bits, l.options["residual"], l.options["rotate_values"])
             if isinstance(l, skv.hf.SkvLayer) else None for l in cache.layers]
    assert kinds == [(2, 2, 0, False), (4, 2, 128, False), None, (3, 3, 0, True)]
    # every layer counted over 2 x 64 tokens x 2 KV heads x 64: the exact layer at 32 bits
    n = 2 * 64 * 2 * 64
    skv_bits = sum(l.memory_bytes * 8 for l in cache.layers if isinstance(l, skv.hf.SkvLayer))
    assert calibrate.held_bits_of(model, cache, 64) == pytest.approx((skv_bits + 32 * n) / (4 * n), rel=1e-12)
    assert skv_bits > 0
