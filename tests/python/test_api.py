"""skv.KVCache and skv.decode_batch: results against an fp64 reference within the bound the bits
allow, float16 input, the compiled set, and bad input that raises and changes nothing."""
import threading

import numpy as np
import pytest

import skv
from conftest import assert_same_state, compiled_with, random_kv, require_compiled, state

# The plain cache of the C++ short form skv::KVCache<K, V, D> (the package's defaults add a residual
# window, rotated keys and sinks).
PLAIN = dict(residual=0, rotate_keys=False, sinks=0, clip=False)


def attention_fp64(k, v, q, scale):
    """Exact attention of q [hq, d] over k, v [n, hkv, d] (GQA: query head h reads KV head h // group)."""
    hq, hkv = q.shape[0], k.shape[1]
    out = np.zeros(q.shape, dtype=np.float64)
    for h in range(hq):
        kh, vh = k[:, h // (hq // hkv)].astype(np.float64), v[:, h // (hq // hkv)].astype(np.float64)
        logits = kh @ q[h].astype(np.float64) * scale
        p = np.exp(logits - logits.max())
        out[h] = p @ vh / p.sum()
    return out


def error_bound(k, v, q, scale, kb, vb):
    """A bound from the bit widths: keys are quantized per channel over 32 tokens, so a logit moves by
    at most delta = scale * sum_c |q_c| * step_c / 2; values per token over 64 channels, so each
    element moves by at most half its group's step. Softmax then moves the output by at most
    (exp(2 delta) - 1) * max |v| on top of the value error."""
    n, hkv, d = k.shape
    full = n // 32 * 32
    kg = k[:full].reshape(-1, 32, hkv, d)
    kstep = (kg.max(axis=1) - kg.min(axis=1)).max(axis=0) / (2**kb - 1)  # [hkv, d], worst group
    vg = v.reshape(n, hkv, -1, 64)
    vstep = ((vg.max(axis=3) - vg.min(axis=3)) / (2**vb - 1)).max()
    group = q.shape[0] // hkv
    delta = max(scale * np.abs(q[h]) @ kstep[h // group] / 2 for h in range(q.shape[0]))
    return vstep / 2 + (np.exp(2 * delta) - 1) * np.abs(v).max() + 1e-3  # fp16 scales, float sums


@pytest.mark.parametrize("kb,vb", [(8, 8), (4, 4), (4, 2), (2, 2)])
def test_decode_within_the_bound_of_its_bits(rng, kb, vb):
    n, hkv, hq, d = 320, 2, 8, 128
    k, v = random_kv(rng, n, hkv, d)
    q = rng.standard_normal((hq, d)).astype(np.float32)
    cache = skv.KVCache(key_bits=kb, value_bits=vb, head_dim=d, num_kv_heads=hkv, max_tokens=n, **PLAIN)
    cache.append(k, v)
    scale = 1 / np.sqrt(d)
    err = np.abs(cache.decode(q) - attention_fp64(k, v, q, scale)).max()
    assert err <= error_bound(k, v, q, scale, kb, vb)
    if kb == 8 and vb == 8:
        assert err < 0.02


def test_properties_and_memory(rng):
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=8, max_tokens=1000, **PLAIN)
    assert (cache.key_bits, cache.value_bits, cache.head_dim, cache.num_kv_heads) == (4, 2, 128, 8)
    assert cache.capacity == 1000 and len(cache) == 0
    # nothing quantized yet: only the full-precision area (the block being filled) counts
    assert cache.memory_bytes == cache.full_precision().size * 4 == 2 * 32 * 8 * 128 * 4
    # K4V2, group 32, fp16 scale + zero: (4 + 1) + (2 + 0.5) = 7.5 bits per pair -> 3.75 per element
    assert cache.bits_per_element == pytest.approx(3.75)
    k, v = random_kv(rng, 130, 8, 128)
    cache.append(k, v)
    assert len(cache) == 130 and cache.quantized_size == 128 and cache.residual_size == 2
    page = cache.page_bytes().size // 2  # two pages of 64 tokens in use
    assert cache.memory_bytes == 2 * page + cache.full_precision().size * 4
    assert cache.default_scale == pytest.approx(1 / np.sqrt(128))
    cache.clear()
    assert len(cache) == 0


def test_defaults_are_the_measured_best_compiled_setting():
    def options(**kw):
        c = skv.KVCache(key_bits=4, value_bits=2, num_kv_heads=3, max_tokens=100, **kw)
        return c.residual, c.rotate_keys, c.sinks, c.clip

    assert options(head_dim=64) == (128, True, 4, False)
    assert "rotate_keys + sinks 4," in repr(skv.KVCache(key_bits=4, value_bits=2, num_kv_heads=1, max_tokens=8))
    assert options(head_dim=96) == (128, False, 0, False)  # no rotation at head_dim 96
    assert options(head_dim=128, rotate_keys=False) == (128, False, 0, False)  # the others turn off too
    if compiled_with(clip=True):
        assert options(head_dim=128, residual=0, clip=True, rotate_keys=True, sinks=4) == (0, True, 4, True)


RICHEST = dict(rotate_keys=True, rotate_values=True, sinks=4, lloyd_max_values=True, int8_ring=True)
CLIP = dict(rotate_keys=True, sinks=4, clip=True)


@pytest.mark.parametrize("opts", [RICHEST, CLIP], ids=["int8_ring", "clip"])
def test_options_and_residual_are_reported(rng, opts):
    require_compiled(**opts)
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=3, max_tokens=400, residual=128, **opts)
    assert cache.residual == 128
    for name in ("rotate_keys", "rotate_values", "sinks", "clip", "lloyd_max_values", "fp16_ring", "int8_ring"):
        assert getattr(cache, name) == opts.get(name, False), name
    k, v = random_kv(rng, 300, 3, 64)
    cache.append(k, v)
    assert cache.sink_size == 4
    assert cache.quantized_size + cache.residual_size + cache.sink_size == 300
    assert cache.residual_size >= 128


def test_rotated_values_dequantize_and_decode_in_the_models_basis(rng):
    # values with two large channels: stored rotated, they come back (dequantize) and out of attention
    # (decode) in the model's basis, and closer to the input than the unrotated cache stores them at 3 bits
    n, hkv, hq, d = 300, 2, 8, 64
    k, v = random_kv(rng, n, hkv, d)
    v[:, :, [5, 40]] *= 8.0
    q = rng.standard_normal((hq, d)).astype(np.float32)
    both = dict(residual=0, rotate_keys=True, sinks=4)
    rotated = skv.KVCache(key_bits=8, value_bits=3, head_dim=d, num_kv_heads=hkv, max_tokens=n, rotate_values=True,
                          **both)
    plain = skv.KVCache(key_bits=8, value_bits=3, head_dim=d, num_kv_heads=hkv, max_tokens=n, **both)
    assert rotated.rotate_values and not plain.rotate_values
    assert "rotate_values" in repr(rotated)
    for c in (rotated, plain):
        c.append(k, v)
    kr, vr = rotated.dequantize()
    _, vp = plain.dequantize()
    np.testing.assert_allclose(vr[:4], v[:4], atol=1e-5 * np.abs(v).max())  # sinks: float32, rotated and back
    err_rot, err_plain = np.abs(vr - v).mean(), np.abs(vp - v).mean()
    assert err_rot < 0.75 * err_plain, (err_rot, err_plain)
    # decode is attention over what dequantize returns
    scale = 1 / np.sqrt(d)
    np.testing.assert_allclose(rotated.decode(q), attention_fp64(kr, vr, q, scale), atol=2e-5 * np.abs(v).max())
    assert rotated.bits_per_element == plain.bits_per_element and rotated.memory_bytes == plain.memory_bytes


def test_lloyd_max_values_decode_in_the_models_basis_with_less_error(rng):
    # rotated values are near normal per token, where Lloyd-Max levels have 0.54x the squared error of
    # evenly spaced ones at 2 bits: the same bits held, values closer to the input, and decode is
    # attention over what dequantize returns
    n, hkv, hq, d = 300, 2, 8, 128
    k, v = random_kv(rng, n, hkv, d)
    q = rng.standard_normal((hq, d)).astype(np.float32)
    opts = dict(residual=0, rotate_keys=True, rotate_values=True, sinks=4)
    lm = skv.KVCache(key_bits=8, value_bits=2, head_dim=d, num_kv_heads=hkv, max_tokens=n, lloyd_max_values=True,
                     **opts)
    even = skv.KVCache(key_bits=8, value_bits=2, head_dim=d, num_kv_heads=hkv, max_tokens=n, **opts)
    assert lm.lloyd_max_values and not even.lloyd_max_values
    assert "lloyd_max_values" in repr(lm) and "lloyd_max_values" not in repr(even)
    for c in (lm, even):
        c.append(k, v)
    kl, vl = lm.dequantize()
    _, ve = even.dequantize()
    err_lm, err_even = np.square(vl[4:] - v[4:]).mean(), np.square(ve[4:] - v[4:]).mean()
    assert err_lm < 0.7 * err_even, (err_lm, err_even)
    np.testing.assert_allclose(lm.decode(q), attention_fp64(kl, vl, q, 1 / np.sqrt(d)), atol=2e-5 * np.abs(v).max())
    assert lm.bits_per_element == even.bits_per_element and lm.memory_bytes == even.memory_bytes


def test_fp16_ring_holds_the_fp16_rounding_in_half_the_memory(rng):
    require_compiled(fp16_ring=True)
    # an fp16 ring holds what the float32 ring holds for float16-rounded input, bit for bit, and
    # attention is the same; the full-precision area takes half the bytes
    n, hkv, hq, d = 300, 2, 8, 64
    k, v = random_kv(rng, n, hkv, d)
    q = rng.standard_normal((hq, d)).astype(np.float32)
    opts = dict(residual=128, rotate_keys=True, rotate_values=True, sinks=4, lloyd_max_values=True)
    half = skv.KVCache(key_bits=3, value_bits=3, head_dim=d, num_kv_heads=hkv, max_tokens=n, fp16_ring=True, **opts)
    wide = skv.KVCache(key_bits=3, value_bits=3, head_dim=d, num_kv_heads=hkv, max_tokens=n, **opts)
    assert half.fp16_ring and not wide.fp16_ring and "fp16_ring" in repr(half)
    half.append(k, v)
    wide.append(k, v)
    area = half.full_precision()
    assert area.dtype == np.float32 and area.size == wide.full_precision().size
    np.testing.assert_array_equal(area, area.astype(np.float16).astype(np.float32))  # every element is an fp16
    assert wide.memory_bytes - half.memory_bytes == area.size * 2
    assert half.bits_per_element == wide.bits_per_element  # the codes and their metadata
    # the rotated ring elements are the fp16 rounding of the float32 cache's
    np.testing.assert_array_equal(area, wide.full_precision().astype(np.float16).astype(np.float32))
    kh, vh = half.dequantize()
    np.testing.assert_allclose(half.decode(q), attention_fp64(kh, vh, q, 1 / np.sqrt(d)), atol=2e-5 * np.abs(v).max())
    # and 8-bit values in that set keep evenly spaced levels
    c = skv.KVCache(key_bits=4, value_bits=8, head_dim=d, num_kv_heads=hkv, max_tokens=n, fp16_ring=True, **opts)
    c.append(k, v)
    assert np.abs(c.dequantize()[1] - v).max() < 0.02 * np.abs(v).max()


def test_int8_ring_holds_8_bit_rows_in_a_quarter_of_the_memory(rng):
    # an 8-bit ring holds every ring and sink row as codes with an fp16 zero and step: each element
    # within one step (the row's range / 255, grown by the fp16 roundings) of the float32 cache's
    n, hkv, hq, d = 300, 2, 8, 64
    k, v = random_kv(rng, n, hkv, d)
    q = rng.standard_normal((hq, d)).astype(np.float32)
    opts = dict(residual=128, rotate_keys=True, rotate_values=True, sinks=4, lloyd_max_values=True)
    byte = skv.KVCache(key_bits=3, value_bits=3, head_dim=d, num_kv_heads=hkv, max_tokens=n, int8_ring=True, **opts)
    wide = skv.KVCache(key_bits=3, value_bits=3, head_dim=d, num_kv_heads=hkv, max_tokens=n, **opts)
    assert byte.int8_ring and not byte.fp16_ring and not wide.int8_ring and "int8_ring" in repr(byte)
    byte.append(k, v)
    wide.append(k, v)
    area, exact = byte.full_precision(), wide.full_precision()
    assert area.dtype == np.float32 and area.shape == exact.shape
    rows = exact.reshape(-1, d)
    step = (rows.max(axis=1) - rows.min(axis=1)) / 255 * (1 + 2**-10) + 2**-24
    err = np.abs(area.reshape(-1, d) - rows).max(axis=1)  # (slots no token reached are 0 in both)
    assert np.all(err <= step * 1.01 + np.abs(rows).max(axis=1) * 2**-11), err.max()
    assert err.max() > 0  # and it is not the float32 ring
    # rows of d codes and 4 bytes of zero and step, against d float32
    assert wide.memory_bytes - byte.memory_bytes == 2 * (160 + 4) * hkv * (4 * d - (d + 4))
    assert byte.bits_per_element == wide.bits_per_element
    kb, vb = byte.dequantize()
    np.testing.assert_allclose(byte.decode(q), attention_fp64(kb, vb, q, 1 / np.sqrt(d)), atol=2e-5 * np.abs(v).max())


def test_int8_ring_holds_unrotated_keys_rotated(rng):
    # keys the cache does not rotate are held in the 8-bit area as rows of the rotated key: an
    # outlier channel then sets the row's range in one channel only, not the step of every element
    n, hkv, d = 40, 2, 128
    k, v = random_kv(rng, n, hkv, d)
    k[..., 3] *= 40
    c = skv.KVCache(key_bits=4, value_bits=3, head_dim=d, num_kv_heads=hkv, max_tokens=n, residual=128,
                    rotate_values=True, lloyd_max_values=True, sinks=4, int8_ring=True)
    assert c.int8_ring and not c.rotate_keys and c.value_group == d  # this set groups values over the head
    c.append(k, v)  # 4 sinks and 36 ring tokens: every key is an 8-bit row
    kb, _ = c.dequantize()
    lo, hi = k.min(axis=-1, keepdims=True), k.max(axis=-1, keepdims=True)
    step = (hi - lo) / 255
    plain = lo + np.round((k - lo) / step) * step  # the row coded as it is
    rms = lambda e: float(np.sqrt(np.mean(e ** 2)))  # noqa: E731
    assert 0 < rms(kb - k) < rms(plain - k) / 2, (rms(kb - k), rms(plain - k))
    rows = c.full_precision().reshape(-1, d)  # the area's rows decoded, keys in the caller's basis
    for t, h in [(0, 0), (5, 1), (39, 0)]:
        assert (rows == kb[t, h]).all(axis=1).any(), (t, h)


def rope(x, freqs, positions):
    """Hugging Face's rotary embedding (rotate_half) of x [n, hkv, d] at `positions`, in float64."""
    d = x.shape[-1]
    a = np.outer(positions, freqs.astype(np.float64))[:, None, :]
    x1, x2 = x[..., :d // 2].astype(np.float64), x[..., d // 2:].astype(np.float64)
    return np.concatenate([x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)], axis=-1)


def test_the_unrotated_key_set_stores_keys_before_the_rotary_embedding(rng):
    n, hkv, d = 300, 2, 128
    freqs = (10000.0 ** (-np.arange(0, d, 2) / d)).astype(np.float32)
    # keys whose channels keep their sign and size from token to token, as a model's do before RoPE
    pre = 0.3 * rng.standard_normal((n, hkv, d)) + 2 * rng.standard_normal((1, hkv, d))
    pre[..., 5] += 12
    k = rope(pre, freqs, np.arange(n)).astype(np.float32)
    _, v = random_kv(rng, n, hkv, d)
    kw = dict(key_bits=3, value_bits=3, head_dim=d, num_kv_heads=hkv, max_tokens=n, residual=0, rotate_values=True,
              lloyd_max_values=True, sinks=4, int8_ring=True)
    given, roped = skv.KVCache(**kw), skv.KVCache(**kw, rope_frequencies=freqs)
    assert given.pre_rope_keys and roped.pre_rope_keys
    assert given.rope_frequencies == [0.0] * (d // 2)  # keys stored as given until frequencies are set
    np.testing.assert_array_equal(roped.rope_frequencies, freqs)
    given.append(k, v)
    roped.append(k[:100], v[:100])  # in two appends: positions continue
    roped.append(k[100:], v[100:])
    kg, _ = given.dequantize()
    kr, vr = roped.dequantize()  # keys as attention reads them: after the rotary embedding again
    q = slice(4, 4 + roped.quantized_size)
    rms = lambda e: float(np.sqrt(np.mean(e ** 2)))  # noqa: E731
    assert rms(kr[q] - k[q]) < 0.3 * rms(kg[q] - k[q]), (rms(kr[q] - k[q]), rms(kg[q] - k[q]))
    # each pre-RoPE channel group within half its 3-bit step; the rotation keeps each pair's norm
    groups = pre[q].reshape(-1, 32, hkv, d)
    half = ((groups.max(axis=1) - groups.min(axis=1)) / 7 / 2).max(axis=0)  # [hkv, d]
    pair = np.sqrt(half[:, :d // 2] ** 2 + half[:, d // 2:] ** 2)
    # (plus the 8-bit ring row each token is rounded through first, about 0.03 here)
    assert (np.abs(kr[q] - k[q]) <= 1.001 * np.concatenate([pair, pair], axis=-1) + 0.1).all()
    # the ring holds the last tokens before the embedding (8-bit rows of R(-t) k)
    rows = roped.full_precision().reshape(-1, d)
    for t in range(4 + roped.quantized_size, n):
        row = rows[(t - 4) % (roped.residual + 32) * hkv]
        assert np.abs(row - pre[t, 0]).max() < 0.05 * np.abs(pre[t, 0]).max(), t
    qh = rng.standard_normal((4, d)).astype(np.float32)
    np.testing.assert_allclose(roped.decode(qh), attention_fp64(kr, vr, qh, 1 / np.sqrt(d)),
                               atol=2e-5 * (1 + np.abs(vr).max()))
    # only this set takes frequencies, head_dim / 2 of them, on an empty cache
    with pytest.raises(ValueError, match="stores keys as they are given"):
        skv.KVCache(**{**kw, "rotate_keys": True}, rope_frequencies=freqs)
    with pytest.raises(ValueError, match="head_dim / 2 = 64"):
        skv.KVCache(**kw, rope_frequencies=freqs[:10])
    with pytest.raises(ValueError, match="not finite"):
        skv.KVCache(**kw, rope_frequencies=np.full(d // 2, np.nan, np.float32))
    assert not skv.KVCache(**{**kw, "rotate_keys": True}).pre_rope_keys
    assert skv.KVCache(**{**kw, "rotate_keys": True}).rope_frequencies is None


def test_float16_input_gives_the_same_cache_as_float32(rng):
    k16, v16 = random_kv(rng, 200, 3, 64, dtype=np.float16)
    caches = []
    for k, v in [(k16, v16), (k16.astype(np.float32), v16.astype(np.float32))]:
        c = skv.KVCache(key_bits=3, value_bits=2, head_dim=64, num_kv_heads=3, max_tokens=256)
        c.append(k, v)
        caches.append(c)
    assert_same_state(state(caches[0]), state(caches[1]))
    q = rng.standard_normal((9, 64)).astype(np.float32)
    np.testing.assert_array_equal(caches[0].decode(q), caches[1].decode(q))


def test_decode_batch_equals_one_decode_per_cache(rng):
    caches, qs = [], []
    for n in (1, 70, 333):
        c = skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=2, max_tokens=400)
        c.append(*random_kv(rng, n, 2, 128))
        caches.append(c)
    q = rng.standard_normal((3, 8, 128)).astype(np.float32)
    out = skv.decode_batch(caches, q, num_threads=1)
    assert out.shape == (3, 8, 128) and out.dtype == np.float32
    for b, c in enumerate(caches):
        np.testing.assert_array_equal(out[b], c.decode(q[b], num_threads=1))


def test_scale_argument(rng):
    c = skv.KVCache(key_bits=8, value_bits=8, head_dim=64, num_kv_heads=1, max_tokens=64, **PLAIN)
    k, v = random_kv(rng, 64, 1, 64)
    c.append(k, v)
    q = rng.standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_array_equal(c.decode(q), c.decode(q, scale=c.default_scale))
    # scale 0: uniform attention, the mean of the (quantized) values
    assert np.abs(c.decode(q, scale=0.0)[0] - v[:, 0].mean(axis=0)).max() < 0.02


def test_compiled_set_and_what_is_not_compiled():
    rows = skv.compiled()
    # 16 pairs in each of the 26 families without Lloyd-Max levels (38 with the comparison sets, clip
    # and fp16_ring), 12 (values of at most 4 bits) in the 6 Lloyd-Max families, 13 (those and 8/8) in
    # the 6 families of the 8-bit-ring set without rotated keys
    comparison = compiled_with(clip=True)
    assert comparison == compiled_with(fp16_ring=True)  # both or neither (SKV_PYTHON_ALL_OPTION_SETS)
    assert len(rows) == 16 * (3 * 2 * (5 if comparison else 3) + 2 * 4) + 12 * 3 * 2 + 13 * 3 * 2
    assert {"key_bits": 4, "value_bits": 2, "head_dim": 128, "residual": 0, "rotate_keys": False,
            "rotate_values": False, "sinks": 0, "clip": False, "lloyd_max_values": False, "fp16_ring": False,
            "int8_ring": False} in rows
    assert {"key_bits": 3, "value_bits": 2, "head_dim": 64, "residual": 128, "rotate_keys": True,
            "rotate_values": True, "sinks": 4, "clip": False, "lloyd_max_values": False, "fp16_ring": False,
            "int8_ring": False} in rows
    assert {"key_bits": 8, "value_bits": 3, "head_dim": 256, "residual": 0, "rotate_keys": True,
            "rotate_values": True, "sinks": 4, "clip": False, "lloyd_max_values": True, "fp16_ring": False,
            "int8_ring": False} in rows
    assert ({"key_bits": 4, "value_bits": 8, "head_dim": 64, "residual": 128, "rotate_keys": True,
             "rotate_values": True, "sinks": 4, "clip": False, "lloyd_max_values": True, "fp16_ring": True,
             "int8_ring": False} in rows) == comparison
    if not comparison:
        with pytest.raises(ValueError, match="built only on request: pip install . "
                                             "-Ccmake.define.SKV_PYTHON_ALL_OPTION_SETS=ON"):
            skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=1, max_tokens=8, rotate_keys=True,
                        sinks=4, clip=True)
    assert {"key_bits": 2, "value_bits": 4, "head_dim": 256, "residual": 128, "rotate_keys": True,
            "rotate_values": True, "sinks": 4, "clip": False, "lloyd_max_values": True, "fp16_ring": False,
            "int8_ring": True} in rows
    unrotated = {(r["key_bits"], r["value_bits"]) for r in rows if r["int8_ring"] and not r["rotate_keys"]}
    assert unrotated == {(a, b) for a in (2, 3, 4, 8) for b in (2, 3, 4)} | {(8, 8)}
    assert {"key_bits": 3, "value_bits": 2, "head_dim": 128, "residual": 0, "rotate_keys": False,
            "rotate_values": True, "sinks": 4, "clip": False, "lloyd_max_values": True, "fp16_ring": False,
            "int8_ring": True} in rows
    assert {(r["key_bits"], r["value_bits"]) for r in rows} == {(a, b) for a in (2, 3, 4, 8) for b in (2, 3, 4, 8)}
    lloyd_max_only = [r for r in rows if r["lloyd_max_values"] and not (r["fp16_ring"] or r["int8_ring"])]
    assert {r["value_bits"] for r in lloyd_max_only} == {2, 3, 4}
    with pytest.raises(ValueError, match="compiled pairs: k2v2, k2v3, k2v4, k3v2"):
        skv.KVCache(key_bits=4, value_bits=8, head_dim=128, num_kv_heads=1, max_tokens=8, rotate_keys=True,
                    rotate_values=True, sinks=4, lloyd_max_values=True)
    with pytest.raises(ValueError, match="compiled pairs: k2v2, k2v3"):
        skv.KVCache(key_bits=5, value_bits=2, head_dim=128, num_kv_heads=1, max_tokens=8)
    with pytest.raises(ValueError, match="no cache compiled for head_dim 80"):
        skv.KVCache(key_bits=4, value_bits=2, head_dim=80, num_kv_heads=1, max_tokens=8)
    with pytest.raises(ValueError, match="no cache compiled for head_dim 96, residual 0, rotate_keys"):
        skv.KVCache(key_bits=4, value_bits=2, head_dim=96, num_kv_heads=1, max_tokens=8, residual=0,
                    rotate_keys=True, sinks=4)
    for bad in [dict(rotate_keys=True), dict(rotate_keys=True, sinks=0), dict(rotate_keys=False, sinks=4),
                dict(sinks=2), dict(clip=True), dict(rotate_values=True),
                dict(rotate_keys=True, rotate_values=True, sinks=4, clip=True), dict(lloyd_max_values=True),
                dict(rotate_keys=True, sinks=4, lloyd_max_values=True), dict(fp16_ring=True),
                dict(rotate_keys=True, rotate_values=True, sinks=4, fp16_ring=True), dict(int8_ring=True),
                dict(rotate_keys=True, rotate_values=True, sinks=4, lloyd_max_values=True, fp16_ring=True,
                     int8_ring=True)]:
        with pytest.raises(ValueError, match="compiled option sets"):
            skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=1, max_tokens=8, **bad)
    with pytest.raises(ValueError, match="num_kv_heads"):
        skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=0, max_tokens=8)


def bad_appends(rng):
    k, v = random_kv(rng, 5, 2, 64)
    nan = k.copy()
    nan[4, 1, 63] = np.nan
    inf = v.copy()
    inf[0, 0, 0] = np.inf
    big_k, big_v = random_kv(rng, 200, 2, 64)
    return [
        ("shape", k[:, :1].copy(), v[:, :1].copy(), "shape"),
        ("head_dim", k[:, :, :32].copy(), v[:, :, :32].copy(), "shape"),
        ("ndim", k.reshape(5, 128), v.reshape(5, 128), "shape"),
        ("tokens", k, v[:4], "same number of tokens"),
        ("float64", k.astype(np.float64), v.astype(np.float64), "float32, float16 or bfloat16"),
        ("int", k.astype(np.int32), v.astype(np.int32), "float32, float16 or bfloat16"),
        ("mixed dtypes", k, v.astype(np.float16), "same dtype"),
        ("not contiguous", np.ascontiguousarray(k.transpose(1, 0, 2)).transpose(1, 0, 2), v, "C-contiguous"),
        ("nan", nan, v, "NaN"),
        ("inf", k, inf, "Inf"),
        ("capacity", big_k, big_v, "capacity"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_bad_append_raises_and_changes_nothing(rng, case):
    name, k, v, message = bad_appends(rng)[case]
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=100, residual=128,
                        **RICHEST)
    cache.append(*random_kv(rng, 70, 2, 64))
    before = state(cache)
    with pytest.raises(ValueError, match=message):
        cache.append(k, v)
    assert_same_state(before, state(cache))


def test_bad_queries_raise(rng):
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=100)
    cache.append(*random_kv(rng, 10, 2, 64))
    before = state(cache)
    q = rng.standard_normal((4, 64)).astype(np.float32)
    cases = [
        (q[:3], "multiple of num_kv_heads"),
        (q[:, :32].copy(), "shape"),
        (q[None], "2 dimensions"),
        (q.astype(np.float64), "float32"),
        (rng.standard_normal((4, 128)).astype(np.float32)[:, ::2], "C-contiguous"),
        (np.full((4, 64), np.nan, dtype=np.float32), "NaN"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            cache.decode(bad)
    with pytest.raises(ValueError, match="finite"):
        cache.decode(q, scale=float("inf"))
    with pytest.raises(ValueError, match="rows for 1 caches"):
        skv.decode_batch([cache], q[None].repeat(2, axis=0))
    other = skv.KVCache(key_bits=4, value_bits=4, head_dim=64, num_kv_heads=2, max_tokens=100)
    with pytest.raises(ValueError, match="same configuration"):
        skv.decode_batch([cache, other], q[None].repeat(2, axis=0))
    with pytest.raises(ValueError, match="at least one cache"):
        skv.decode_batch([], q[None])
    assert_same_state(before, state(cache))


def test_arrays_are_read_in_place_and_read_only_arrays_work(rng):
    k, v = random_kv(rng, 40, 2, 64)
    k.setflags(write=False)
    v.setflags(write=False)
    cache = skv.KVCache(key_bits=4, value_bits=4, head_dim=64, num_kv_heads=2, max_tokens=40)
    cache.append(k, v)
    q = rng.standard_normal((2, 64)).astype(np.float32)
    q.setflags(write=False)
    assert np.isfinite(cache.decode(q)).all()


def test_concurrent_decodes_and_appends_from_threads(rng):
    """The GIL is released during the work; decodes share a cache, appends are exclusive."""
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=2, max_tokens=4096)
    cache.append(*random_kv(rng, 2048, 2, 128))
    q = rng.standard_normal((8, 128)).astype(np.float32)
    expected = cache.decode(q, num_threads=1)
    results, errors = [], []

    def decode_many():
        try:
            for _ in range(20):
                results.append(cache.decode(q, num_threads=1))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=decode_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80
    for r in results:
        np.testing.assert_array_equal(r, expected)

    extra_k, extra_v = random_kv(rng, 64, 2, 128)
    appenders = [threading.Thread(target=cache.append, args=(extra_k[i:i + 16], extra_v[i:i + 16]))
                 for i in range(0, 64, 16)]
    for t in appenders:
        t.start()
    for t in appenders:
        t.join()
    assert len(cache) == 2048 + 64


def test_torch_tensors_are_accepted(rng):
    torch = pytest.importorskip("torch")
    k, v = random_kv(rng, 100, 2, 64)
    q = rng.standard_normal((4, 64)).astype(np.float32)
    a = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=100)
    b = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=100)
    a.append(k, v)
    b.append(torch.from_numpy(k), torch.from_numpy(v).half().float())
    b.clear()
    b.append(torch.from_numpy(k), torch.from_numpy(v))
    assert_same_state(state(a), state(b))
    np.testing.assert_array_equal(a.decode(q), b.decode(torch.from_numpy(q)))
    a.clear()
    a.append(k.astype(np.float16), v.astype(np.float16))
    b.clear()
    b.append(torch.from_numpy(k).half(), torch.from_numpy(v).half())
    assert_same_state(state(a), state(b))


def test_attention_for_many_query_tokens(rng):
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=2, max_tokens=512)
    cache.append(*random_kv(rng, 300, 2, 128))
    q = rng.standard_normal((37, 8, 128)).astype(np.float32)
    out = cache.attention(q)
    assert out.shape == (37, 8, 128) and out.dtype == np.float32
    # the last query sees every token, as a decode does; one query token runs the decode itself
    last = cache.decode(q[-1])
    assert np.abs(out[-1] - last).max() <= 1e-4 * (1 + 4.0)
    np.testing.assert_array_equal(cache.attention(q[-1:])[0], last)
    # query i sits at position 263 + i: queries 0..24 must not see tokens 288.. (a new key group), so
    # changing those tokens changes nothing for them, bit for bit
    other = skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=2, max_tokens=512)
    cache.clear()
    k, v = random_kv(rng, 300, 2, 128)
    cache.append(k, v)
    k2, v2 = k.copy(), v.copy()
    k2[288:] *= 3.0
    v2[288:] += 1.0
    other.append(k2, v2)
    a, b = cache.attention(q), other.attention(q)
    np.testing.assert_array_equal(a[:25], b[:25])
    assert np.abs(a[-1] - b[-1]).max() > 0.1
    with pytest.raises(ValueError, match="between 1 and len"):
        cache.attention(rng.standard_normal((301, 8, 128)).astype(np.float32))
    with pytest.raises(ValueError, match="num_q_tokens, num_q_heads, head_dim"):
        cache.attention(q[0])
