"""The Python package computes exactly what the C++ library computes: the same cache bytes and the
same attention output, bit for bit, against tests/python/cpp_reference.cpp (skv_python_reference,
built by the CMake test build, which sets SKV_CPP_REFERENCE)."""
import os
import subprocess

import numpy as np
import pytest

import skv
from conftest import random_kv, require_compiled

REFERENCE = os.environ.get("SKV_CPP_REFERENCE")

CONFIGS = [
    # key bits, value bits, head_dim, residual, options (0 none, 1 rotate_keys + sinks 4, 2 and clip,
    # 3 rotate_keys + rotate_values + sinks 4, 4 the same with Lloyd-Max values)
    (4, 2, 128, 0, 0),
    (8, 8, 128, 0, 0),
    (4, 2, 128, 128, 1),
    (2, 4, 64, 128, 2),
    (3, 3, 256, 0, 2),
    (4, 2, 64, 0, 3),
    (3, 3, 128, 128, 4),
]


@pytest.mark.skipif(not REFERENCE, reason="SKV_CPP_REFERENCE is set by the CMake test build")
@pytest.mark.parametrize("kb,vb,dim,residual,options", CONFIGS)
@pytest.mark.parametrize("tokens,chunk", [(1, 1), (300, 7), (517, 517)])
def test_python_equals_cpp(tmp_path, rng, kb, vb, dim, residual, options, tokens, chunk):
    if options == 2:
        require_compiled(clip=True)
    kv_heads, q_heads = 2, 8
    k, v = random_kv(rng, tokens, kv_heads, dim)
    k[:, :, 3] += 40.0  # an outlier channel
    q = rng.standard_normal((q_heads, dim)).astype(np.float32)
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(inp, "wb") as f:
        f.write(k.tobytes() + v.tobytes() + q.tobytes())
    # one thread on both sides: a decode split over more threads sums its partial states in another order
    subprocess.run([REFERENCE, str(kb), str(vb), str(dim), str(residual), str(int(options)), str(kv_heads),
                    str(q_heads), str(tokens), str(chunk), str(inp), str(out)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})

    capacity = max(tokens, 64)
    cache = skv.KVCache(key_bits=kb, value_bits=vb, head_dim=dim, num_kv_heads=kv_heads, max_tokens=capacity,
                        residual=residual, rotate_keys=options > 0, rotate_values=options >= 3,
                        sinks=4 if options else 0, clip=options == 2, lloyd_max_values=options == 4)
    for t in range(0, tokens, chunk):
        cache.append(k[t:t + chunk], v[t:t + chunk])
    got = cache.decode(q, num_threads=1)

    raw = np.fromfile(out, dtype=np.uint8)
    pages = cache.page_bytes()
    full = cache.full_precision()
    n_out = q_heads * dim * 4
    assert raw.size == n_out + pages.size + full.size * 4
    np.testing.assert_array_equal(got, raw[:n_out].view(np.float32).reshape(q_heads, dim))
    np.testing.assert_array_equal(pages, raw[n_out:n_out + pages.size])
    np.testing.assert_array_equal(full, raw[n_out + pages.size:].view(np.float32))
