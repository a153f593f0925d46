#!/usr/bin/env python3
"""Dump the queries, keys and values a Hugging Face causal LM computes on a text, in the format
`skv eval` and `skv plan --kv` read (docs/calibration.md):

    layers.{i}.k  [tokens, kv_heads, head_dim]   keys as the KV cache stores them (after RoPE)
    layers.{i}.v  [tokens, kv_heads, head_dim]
    layers.{i}.q  [tokens, q_heads, head_dim]    queries after RoPE (optional: --no-queries)

Keys and values come from the model's returned cache (exactly what an engine would cache). Queries
are captured where the attention module applies its rotary embedding (`apply_rotary_pos_emb` in the
model's transformers module, used by Llama, Mistral, Qwen2/2.5/3, Gemma, Phi-3 and others); for
models without that function the queries are left out and skv uses the next token's key instead.

Usage:
    pip install torch transformers safetensors
    python dump_kv.py meta-llama/Llama-3.1-8B-Instruct --text-file wiki.txt --tokens 2048 -o llama.kv.safetensors
    skv eval llama.kv.safetensors
    skv plan --kv llama.kv.safetensors --budget 3.75 --granularity head
"""

import argparse
import importlib
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="Hugging Face model id or local folder")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="the calibration text")
    src.add_argument("--text-file", help="a file holding the calibration text")
    p.add_argument("--tokens", type=int, default=1024, help="tokens to run (the text is truncated; default 1024)")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f16", help="dump dtype (default f16)")
    p.add_argument("--model-dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:0, cpu (default: cuda when available)")
    p.add_argument("--no-queries", action="store_true", help="do not record queries")
    p.add_argument("--trust-remote-code", action="store_true")
    return p.parse_args()


DEFAULT_TEXT = (
    "The history of computing is the story of ever smaller switches and ever larger memories. "
    "Early machines stored a few thousand words in mercury delay lines; today a single accelerator "
    "holds tens of gigabytes, and language models still run out of room for their key-value caches. "
)


def main():
    args = parse_args()
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        sys.exit(f"dump_kv.py: {e}; install torch, transformers and safetensors")

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.model_dtype]
    tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype, trust_remote_code=args.trust_remote_code)
    model.to(device).eval()

    if args.text_file:
        with open(args.text_file, encoding="utf-8") as f:
            text = f.read()
    else:
        text = args.text or DEFAULT_TEXT * 64
    ids = tok(text, return_tensors="pt").input_ids[:, : args.tokens].to(device)
    if ids.shape[1] < 32:
        sys.exit(f"dump_kv.py: only {ids.shape[1]} tokens; skv needs at least one key group (32)")

    # Capture post-RoPE queries by wrapping the modeling module's apply_rotary_pos_emb; calls come
    # in layer order during one forward pass.
    captured_q = []
    patched = None
    if not args.no_queries:
        module_name = type(model).__module__
        mod = importlib.import_module(module_name)
        original = getattr(mod, "apply_rotary_pos_emb", None)
        if original is not None:

            def wrapper(q, k, *a, **kw):
                out = original(q, k, *a, **kw)
                captured_q.append(out[0].detach())
                return out

            mod.apply_rotary_pos_emb = wrapper
            patched = (mod, original)
        else:
            print(f"dump_kv.py: {module_name} has no apply_rotary_pos_emb; dumping without queries", file=sys.stderr)

    try:
        with torch.no_grad():
            out = model(ids, use_cache=True)
    finally:
        if patched:
            patched[0].apply_rotary_pos_emb = patched[1]

    cache = out.past_key_values
    if hasattr(cache, "to_legacy_cache"):
        cache = cache.to_legacy_cache()
    elif hasattr(cache, "layers"):  # newer transformers: DynamicCache.layers[i].keys / .values
        cache = [(layer.keys, layer.values) for layer in cache.layers]

    target = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    tensors = {}
    n_layers = len(cache)
    if captured_q and len(captured_q) != n_layers:
        print(f"dump_kv.py: captured {len(captured_q)} query tensors for {n_layers} layers; dumping without queries",
              file=sys.stderr)
        captured_q = []
    for i, (k, v) in enumerate(cache):
        # [batch, heads, tokens, head_dim] -> [tokens, heads, head_dim]
        tensors[f"layers.{i}.k"] = k[0].transpose(0, 1).to(target).contiguous().cpu()
        tensors[f"layers.{i}.v"] = v[0].transpose(0, 1).to(target).contiguous().cpu()
        if captured_q:
            tensors[f"layers.{i}.q"] = captured_q[i][0].transpose(0, 1).to(target).contiguous().cpu()
    meta = {"format": "skv-kv-dump", "model": args.model, "tokens": str(ids.shape[1])}
    save_file(tensors, args.output, metadata=meta)
    k0 = tensors["layers.0.k"]
    print(f"wrote {args.output}: {n_layers} layers, {k0.shape[0]} tokens, {k0.shape[1]} KV heads, head_dim {k0.shape[2]}"
          f"{', with queries' if captured_q else ', no queries'}")


if __name__ == "__main__":
    main()
