#!/usr/bin/env python3
"""Python overhead of skv.KVCache.decode: the same decode timed from a Python loop and from a C++ loop
inside the extension (KVCache._time_decode), in one run, so the ratio is the cost of the binding
(argument checks, output allocation, GIL release). Usage: python3 bench/python_overhead.py"""
import argparse
import time

import numpy as np

import skv


def python_loop(cache, q, iterations, threads):
    start = time.perf_counter()
    for _ in range(iterations):
        cache.decode(q, num_threads=threads)
    return (time.perf_counter() - start) / iterations


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=7, help="alternating rounds; the median is reported")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"| config | tokens | threads | C++ loop (us) | Python loop (us) | Python / C++ |")
    print(f"|---|---|---|---|---|---|")
    for kb, vb in [(4, 2), (8, 8), (2, 2)]:
        cache = skv.KVCache(key_bits=kb, value_bits=vb, head_dim=128, num_kv_heads=8, max_tokens=args.tokens)
        cache.append(rng.standard_normal((args.tokens, 8, 128), dtype=np.float32),
                     rng.standard_normal((args.tokens, 8, 128), dtype=np.float32))
        q = rng.standard_normal((32, 128), dtype=np.float32)
        for threads in (1, 0):
            iterations = 200
            cache.decode(q, num_threads=threads)  # warm up
            cpp, py = [], []
            for _ in range(args.repeats):
                cpp.append(cache._time_decode(q, iterations, threads))
                py.append(python_loop(cache, q, iterations, threads))
            c, t = float(np.median(cpp)), float(np.median(py))
            label = "all" if threads == 0 else str(threads)
            print(f"| k{kb}v{vb} | {args.tokens} | {label} | {c * 1e6:.1f} | {t * 1e6:.1f} | {t / c:.3f} |")


if __name__ == "__main__":
    main()
