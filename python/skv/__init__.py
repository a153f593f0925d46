"""skv: mixed-precision quantized KV caches, more bits for keys and fewer for values.

A thin layer over the header-only C++ library: ``skv.KVCache`` picks one compiled cache type
(``skv.compiled()`` lists them) and its append and attention run the C++ kernels, with the GIL
released. Arrays (numpy, or anything with ``__dlpack__`` / the buffer protocol, such as torch CPU
tensors) are read in place (float16 and bfloat16 ones are widened exactly to float32). Errors raise
``ValueError`` with skv's message.

    import numpy as np, skv
    cache = skv.KVCache(key_bits=4, value_bits=2, head_dim=128, num_kv_heads=8, max_tokens=4096)
    cache.append(k, v)        # [n, num_kv_heads, head_dim], float32, float16 or bfloat16
    out = cache.decode(q)     # [num_q_heads, head_dim] -> the same shape and dtype

skv.hf (pip install .[hf]) runs Hugging Face transformers models through skv's caches.

See docs/python.md.
"""

from ._skv import KVCache, compiled, decode_batch

__all__ = ["KVCache", "compiled", "decode_batch", "__version__"]
__version__ = "0.1.0"
