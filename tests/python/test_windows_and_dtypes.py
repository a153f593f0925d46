"""Sliding windows, rollback, bfloat16 / float16 arrays and out= through the Python package."""
import numpy as np
import pytest

import skv
from conftest import assert_same_state, random_kv, state

PLAIN = dict(residual=0, rotate_keys=False, sinks=0, clip=False)


def window_attention_fp64(k, v, q, scale, window):
    """Exact attention of the last token's query over its window: tokens n - window .. n - 1."""
    n = k.shape[0]
    lo = max(0, n - window)
    hq, hkv = q.shape[0], k.shape[1]
    out = np.zeros(q.shape)
    for h in range(hq):
        kh, vh = k[lo:, h // (hq // hkv)].astype(np.float64), v[lo:, h // (hq // hkv)].astype(np.float64)
        logits = kh @ q[h].astype(np.float64) * scale
        p = np.exp(logits - logits.max())
        out[h] = p @ vh / p.sum()
    return out


@pytest.mark.parametrize("window", [1, 33, 100])
def test_window_cache_attends_to_exactly_its_window_with_bounded_memory(rng, window):
    cache = skv.KVCache(key_bits=8, value_bits=8, head_dim=64, num_kv_heads=2, max_tokens=2**31 - 1, window=window,
                        **PLAIN)
    assert cache.window == window and cache.capacity == 2**31 - 1
    k, v = random_kv(rng, 3000, 2, 64)
    q = rng.standard_normal((4, 64)).astype(np.float32)
    sizes = []
    for t in range(0, 3000, 50):
        cache.append(k[t:t + 50], v[t:t + 50])
        sizes.append(cache.memory_bytes)
    assert len(set(sizes[-20:])) == 1  # constant once the window is full
    assert cache.reserved_bytes < 3000 * 2 * 64 * 2  # far below the stream's 8-bit size
    err = np.abs(cache.decode(q) - window_attention_fp64(k, v, q, cache.default_scale, window)).max()
    assert err < 0.03
    # a chunk of queries: each sees its own window
    chunk = cache.attention(q[None].repeat(3, axis=0))
    np.testing.assert_allclose(chunk[-1], cache.decode(q), atol=2e-3)


def test_window_cache_equals_an_unbounded_cache_with_hidden_sinks(rng):
    # the defaults (rotated keys, 4 sinks, residual 128): windows hide the sinks like any token
    windowed = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=5000, window=256)
    assert not windowed.keep_sinks
    k, v = random_kv(rng, 1000, 2, 64)
    for t in range(1000):
        windowed.append(k[t:t + 1], v[t:t + 1])
    q = rng.standard_normal((4, 64)).astype(np.float32)
    kept = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=5000, window=256,
                       keep_sinks=True)
    for t in range(1000):
        kept.append(k[t:t + 1], v[t:t + 1])
    assert np.abs(kept.decode(q) - windowed.decode(q)).max() > 1e-4  # the 4 sinks make a difference
    with pytest.raises(ValueError, match="same configuration, num_kv_heads, window and keep_sinks"):
        skv.decode_batch([windowed, kept], q[None].repeat(2, axis=0))


def test_the_unrotated_key_set_holds_pages_of_one_key_group(rng):
    # rotated values on Lloyd-Max levels, 4 sinks, 8-bit ring, keys unrotated: values grouped over the
    # whole head and pages of 32 tokens, so a window layer holds fewer slots around its window
    opts = dict(residual=0, rotate_values=True, lloyd_max_values=True, sinks=4, int8_ring=True)
    d, window, n = 256, 512, 2048
    c = skv.KVCache(key_bits=8, value_bits=8, head_dim=d, num_kv_heads=1, max_tokens=2**31 - 1, window=window,
                    max_chunk=1, **opts)
    assert (c.page_size, c.value_group, c.rotate_keys) == (32, d, False)
    other = skv.KVCache(key_bits=8, value_bits=8, head_dim=d, num_kv_heads=1, max_tokens=64, rotate_keys=True, **opts)
    assert (other.page_size, other.value_group) == (64, 64)
    k, v = random_kv(rng, n, 1, d)
    for t in range(n):
        c.append(k[t:t + 1], v[t:t + 1])
    # ceil((window + max_chunk - 1) / 32) = 16 pages of 32 tokens (512 slots; 9 of 64 hold 576): pages of
    # one key group end where the quantized tokens end, so the window needs no page beyond its own
    page = c.bits_per_element * 2 * d * 32 / 8
    assert len(c.page_bytes()) == 16 * page
    assert c.memory_bytes == 16 * page + 2 * (32 + 4) * (d + 4)  # + the ring's and sinks' 8-bit rows
    q = rng.standard_normal((4, d)).astype(np.float32)
    err = np.abs(c.decode(q) - window_attention_fp64(k, v, q, c.default_scale, window)).max()
    assert err < 0.03


def test_truncate_rolls_back_drafted_tokens_exactly(rng):
    k, v = random_kv(rng, 400, 2, 64)
    spec = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=400, rollback=32)
    fresh = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=400)
    assert spec.rollback == 32
    for t in range(0, 290, 10):
        spec.append(k[t:t + 10], v[t:t + 10])
        fresh.append(k[t:t + 10], v[t:t + 10])
    for t in range(290, 320, 5):  # six drafted chunks of 5, then 22 of them rejected
        spec.append(k[t:t + 5], v[t:t + 5])
    spec.truncate(298)
    fresh.append(k[290:298], v[290:298])
    spec.append(k[350:360], v[350:360])
    fresh.append(k[350:360], v[350:360])
    q = rng.standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_array_equal(spec.decode(q), fresh.decode(q))
    with pytest.raises(ValueError, match="truncate to 400 tokens"):
        spec.truncate(400)
    long = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=400)
    long.append(k, v)  # one long append: its blocks have no float copies
    before = state(long)
    with pytest.raises(ValueError, match="cannot truncate"):
        long.truncate(100)
    assert_same_state(before, state(long))


def test_bfloat16_append_equals_float32_of_the_same_values(rng):
    torch = pytest.importorskip("torch")
    k, v = random_kv(rng, 150, 2, 64)
    kb, vb = torch.from_numpy(k).bfloat16(), torch.from_numpy(v).bfloat16()
    a = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=200)
    b = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=200)
    a.append(kb, vb)
    b.append(kb.float().numpy(), vb.float().numpy())
    assert_same_state(state(a), state(b))
    with pytest.raises(ValueError, match="same dtype"):
        a.append(kb, vb.float())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_queries_give_the_float_result_rounded_once(rng, dtype):
    torch = pytest.importorskip("torch")
    tdtype = getattr(torch, dtype)
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=2, max_tokens=300)
    cache.append(*random_kv(rng, 300, 2, 128))
    q = torch.from_numpy(rng.standard_normal((8, 128)).astype(np.float32)).to(tdtype)
    out = cache.decode(q, num_threads=1)
    assert isinstance(out, torch.Tensor) and out.dtype == tdtype and out.shape == (8, 128)
    ref = torch.from_numpy(cache.decode(q.float().numpy(), num_threads=1)).to(tdtype)
    assert torch.equal(out, ref)
    qc = torch.from_numpy(rng.standard_normal((5, 8, 128)).astype(np.float32)).to(tdtype)
    outc = cache.attention(qc, num_threads=1)
    refc = torch.from_numpy(cache.attention(qc.float().numpy(), num_threads=1)).to(tdtype)
    assert outc.dtype == tdtype and torch.equal(outc, refc)
    batch = skv.decode_batch([cache, cache], torch.stack([q, q]), num_threads=1)
    assert torch.equal(batch[0], ref) and torch.equal(batch[1], ref)


def test_out_writes_into_the_given_array(rng):
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=100)
    cache.append(*random_kv(rng, 100, 2, 64))
    q = rng.standard_normal((4, 64)).astype(np.float32)
    out = np.full((4, 64), 7.0, np.float32)
    assert cache.decode(q, out=out) is out
    np.testing.assert_array_equal(out, cache.decode(q))
    chunk = np.empty((6, 4, 64), np.float32)
    qc = rng.standard_normal((6, 4, 64)).astype(np.float32)
    assert cache.attention(qc, out=chunk) is chunk
    np.testing.assert_array_equal(chunk, cache.attention(qc))
    half = np.empty((4, 64), np.float16)
    cache.decode(q.astype(np.float16), out=half)
    np.testing.assert_array_equal(half, cache.decode(q.astype(np.float16)))
    for bad, message in [(np.empty((4, 64), np.float16), "q's dtype"), (np.empty((4, 32), np.float32), "shape"),
                         (np.empty((8, 64), np.float32)[::2], "C-contiguous"), ([1.0, 2.0], "writable array")]:
        with pytest.raises(ValueError, match=message):
            cache.decode(q, out=bad)
    frozen = np.empty((4, 64), np.float32)
    frozen.setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        cache.decode(q, out=frozen)


def test_torch_out_and_torch_results(rng):
    torch = pytest.importorskip("torch")
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=100)
    cache.append(*random_kv(rng, 100, 2, 64))
    q = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    out = torch.empty(3, 4, 64, dtype=torch.bfloat16)
    assert cache.attention(q, out=out) is out
    assert torch.equal(out, cache.attention(q))
    assert isinstance(cache.decode(q[0].float()), torch.Tensor)

    class OnlyDLPack:  # a bfloat16 array from another framework: numpy cannot hold the result
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kw):
            return self.t.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    with pytest.raises(ValueError, match="bfloat16 queries that are not torch tensors need out="):
        cache.decode(OnlyDLPack(q[0]))
    out0 = torch.empty(4, 64, dtype=torch.bfloat16)
    cache.decode(OnlyDLPack(q[0]), out=out0)
    assert torch.equal(out0, cache.decode(q[0]))
