import numpy as np
import pytest

skv = pytest.importorskip("skv", reason="the skv package is not built (pip install . or the CMake test build)")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_kv(rng, n, heads, dim, dtype=np.float32):
    k = rng.standard_normal((n, heads, dim)).astype(dtype)
    v = rng.standard_normal((n, heads, dim)).astype(dtype)
    return k, v


def state(cache):
    """Everything a cache stores: its length, page bytes and full-precision area."""
    return len(cache), cache.page_bytes().copy(), cache.full_precision().copy()


def assert_same_state(a, b):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])


def compiled_with(**flags) -> bool:
    """Whether the extension holds an option set with these flags (clip and fp16_ring are built only
    with -DSKV_PYTHON_ALL_OPTION_SETS=ON)."""
    return any(all(row[k] == v for k, v in flags.items()) for row in skv.compiled())


def require_compiled(**flags):
    """Skips the calling test unless the extension holds an option set with these flags."""
    if not compiled_with(**flags):
        pytest.skip(f"{flags} is compiled only with -DSKV_PYTHON_ALL_OPTION_SETS=ON")
