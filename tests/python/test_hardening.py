"""Defects found by a hostile review of the Python surface, each pinned by a test: thread counts
that crashed, a hang after fork(), prefill against decode, empty arrays, the rotated-key range, the
length read without the lock, and decode of an empty cache."""
import multiprocessing
import threading

import numpy as np
import pytest

import skv
from conftest import random_kv


def filled_cache(rng, n=700, heads=2, dim=128, **kw):
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=dim, num_kv_heads=heads, max_tokens=max(n, 1), **kw)
    if n:
        cache.append(*random_kv(rng, n, heads, dim))
    return cache


def test_huge_thread_counts_are_clamped_not_a_crash(rng):
    cache = filled_cache(rng)
    q = rng.standard_normal((8, 128)).astype(np.float32)
    one = cache.decode(q, num_threads=1)
    for threads in (70000, 2**31 - 1):
        np.testing.assert_allclose(cache.decode(q, num_threads=threads), one, atol=1e-5)
        cache.attention(q[None].repeat(3, axis=0), num_threads=threads)
        skv.decode_batch([cache], q[None], num_threads=threads)
    with pytest.raises(ValueError, match="num_threads must not be negative"):
        cache.decode(q, num_threads=-1)


def _decode_in_child(queue):
    rng = np.random.default_rng(5)
    cache = filled_cache(rng, n=4000)
    q = rng.standard_normal((8, 128)).astype(np.float32)
    queue.put(float(np.abs(cache.decode(q, num_threads=2)).sum()))


def test_threaded_decode_in_a_forked_child_returns(rng):
    # the parent runs an OpenMP team first: a long append and a threaded decode
    cache = filled_cache(rng, n=4000)
    cache.decode(rng.standard_normal((8, 128)).astype(np.float32), num_threads=2)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_decode_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, "a threaded decode in a forked child never returned"
    assert child.exitcode == 0 and np.isfinite(queue.get(timeout=5))


def test_prefill_meets_the_decode_tolerance_at_large_logit_spreads(rng):
    # keys N(0, 8), queries N(0, 1.5): logits with a spread of about 12
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=2, max_tokens=512, residual=0,
                        rotate_keys=False, sinks=0, clip=False)
    for t in range(0, 512, 128):
        k = (rng.standard_normal((128, 2, 128)) * 8).astype(np.float32)
        cache.append(k, rng.standard_normal((128, 2, 128)).astype(np.float32))
    q = (rng.standard_normal((2, 8, 128)) * 1.5).astype(np.float32)
    vmax = 4.5  # about the largest |value| of 512 x 256 normal values
    np.testing.assert_allclose(cache.attention(q)[-1], cache.decode(q[-1]), atol=2 * 2e-4 * (1 + vmax), rtol=0)


def test_empty_arrays_get_the_real_error_not_a_contiguity_one(rng):
    cache = filled_cache(rng, n=10)
    before = len(cache)
    cache.append(np.zeros((0, 2, 128), np.float32), np.zeros((0, 2, 128), np.float32))  # nothing to append
    assert len(cache) == before
    with pytest.raises(ValueError, match="between 1 and len"):
        cache.attention(np.zeros((0, 8, 128), np.float32))
    with pytest.raises(ValueError, match="num_q_heads .0. must be a positive multiple"):
        cache.decode(np.zeros((0, 128), np.float32))


def test_decode_of_an_empty_cache_raises_like_attention(rng):
    cache = filled_cache(rng, n=0)
    q = rng.standard_normal((8, 128)).astype(np.float32)
    with pytest.raises(ValueError, match="cache is empty"):
        cache.decode(q)
    with pytest.raises(ValueError, match="cache is empty"):
        skv.decode_batch([cache], q[None])
    with pytest.raises(ValueError, match="between 1 and len"):
        cache.attention(q[None])


def test_rotated_keys_name_the_guaranteed_range(rng):
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=1, max_tokens=64)  # rotated keys
    k = np.full((1, 1, 128), 30000.0, np.float32)  # within |x| <= 32752, but the rotation sums them
    with pytest.raises(ValueError, match=r"keys within \+-2894\.\d+ always fit"):
        cache.append(k, np.zeros_like(k))
    assert len(cache) == 0
    cache.append(np.full((1, 1, 128), 2894.0, np.float32), np.zeros((1, 1, 128), np.float32))
    assert len(cache) == 1
    both = skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=1, max_tokens=64, rotate_keys=True,
                       rotate_values=True, sinks=4)
    with pytest.raises(ValueError, match=r"rotated values.*values within \+-2894\.\d+ always fit"):
        both.append(np.zeros_like(k), k)
    assert len(both) == 0


def test_lengths_are_read_under_the_lock_while_appends_run(rng):
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=64, num_kv_heads=2, max_tokens=40000)
    k, v = random_kv(rng, 64, 2, 64)
    seen, errors = [], []
    stop = threading.Event()

    def read():
        try:
            while not stop.is_set():
                n = len(cache)
                assert cache.quantized_size + cache.residual_size + cache.sink_size <= len(cache) + 64
                seen.append(n)
                if n:
                    cache.attention(np.ones((1, 4, 64), np.float32))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(300):
        cache.append(k, v)
    stop.set()
    reader.join()
    assert not errors
    assert seen == sorted(seen) and len(cache) == 300 * 64
