"""skv.hf: transformers models generating through SkvCache with attn_implementation="skv", against
transformers' own DynamicCache, on tiny random-weight models built from configs (Llama, Qwen3 and
Gemma 3 with sliding-window layers, Mistral); nothing is downloaded."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import skv.hf  # noqa: E402  (registers attn_implementation="skv")
from transformers import DynamicCache  # noqa: E402

COMMON = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
              eos_token_id=None)
MODELS = ["llama", "qwen3", "gemma3", "mistral"]
WINDOW = 48  # sliding layers see 48 tokens: prompts and generations here are longer


def make(name, attn="skv", seed=0, dtype=torch.float32, **over):
    torch.manual_seed(seed)
    if name == "llama":
        cfg, cls = transformers.LlamaConfig(**{**COMMON, **over}), transformers.LlamaForCausalLM
    elif name == "qwen3":  # layers 2 and 3 slide
        cfg = transformers.Qwen3Config(**{**COMMON, "use_sliding_window": True, "sliding_window": WINDOW,
                                          "max_window_layers": 2, **over})
        cls = transformers.Qwen3ForCausalLM
    elif name == "gemma3":  # sliding, full, sliding, full
        cfg = transformers.Gemma3TextConfig(**{**COMMON, "sliding_window": WINDOW, "query_pre_attn_scalar": 64,
                                               "sliding_window_pattern": 2, **over})
        cls = transformers.Gemma3ForCausalLM
    elif name == "mistral":  # every layer slides
        cfg, cls = transformers.MistralConfig(**{**COMMON, "sliding_window": WINDOW, **over}), transformers.MistralForCausalLM
    else:
        raise KeyError(name)
    cfg._attn_implementation = attn
    return cls(cfg).eval().to(dtype)


def prompt(n, seed):
    return torch.randint(3, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def greedy(model, ids, cache, n=64, **kw):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, do_sample=False, cache=cache, **kw)


# 8-bit keys and values move the logits of these random models by up to 5e-3 (teacher-forced, 200
# tokens); random weights make many decisions near-ties, so token equality is asserted where the
# exact cache's top-2 margin exceeds 4x that: everywhere else a tie can go either way.
MARGIN = 0.02


@pytest.mark.parametrize("name", MODELS)
def test_k8v8_generates_the_tokens_of_dynamic_cache(name):
    ref_model, model = make(name, "eager"), make(name)
    ids = prompt(200, 1)  # past the 128-token residual window: most tokens are quantized
    ref = greedy(ref_model, ids, DynamicCache(config=ref_model.config))
    cache = skv.hf.SkvCache(model.config, key_bits=8, value_bits=8)
    got = greedy(model, ids, cache)
    assert all(len(c) == 263 for layer in cache.layers for c in layer.rows)
    # teacher-forced on the reference's tokens: the reference's margins, and skv's choices
    with torch.no_grad():
        exact = ref_model(ref[:, :-1]).logits[0, 199:]
        quant = model(ref[:, :-1], cache=skv.hf.SkvCache(model.config, key_bits=8, value_bits=8),
                      use_cache=True).logits[0, 199:]
    top2 = exact.topk(2, -1).values
    decisive = (top2[:, 0] - top2[:, 1]) > MARGIN
    assert decisive.float().mean() > 0.6
    assert torch.equal(quant.argmax(-1)[decisive], ref[0, 200:][decisive])
    assert float((quant - exact).abs().max()) < MARGIN / 2
    # generation itself: identical up to the first near-tie of the reference
    first_tie = int((~decisive).nonzero()[0]) if bool((~decisive).any()) else 64
    assert torch.equal(got[0, :200 + first_tie + 1], ref[0, :200 + first_tie + 1])
    # sliding-window layers (all of Mistral's, half of Qwen3's and Gemma 3's) got window caches
    sliding = [layer.rows[0].window for layer in cache.layers if layer.is_sliding]
    assert sliding == ([] if name == "llama" else [WINDOW] * (4 if name == "mistral" else 2))


def next_token_logprobs(model, cache, ids, chunk=1):
    """Teacher-forced log-probabilities of every position, feeding `chunk` tokens per forward."""
    out = []
    with torch.no_grad():
        for s in range(0, ids.shape[1], chunk):
            logits = model(ids[:, s:s + chunk], cache=cache, use_cache=True).logits
            out.append(torch.log_softmax(logits.float(), -1))
    return torch.cat(out, 1)[0]


@pytest.mark.parametrize("name", MODELS)
def test_default_k4v2_stays_within_a_kl_bound_per_step(name):
    ref_model, model = make(name, "eager"), make(name)
    ids = prompt(400, 2)
    ref = next_token_logprobs(ref_model, DynamicCache(config=ref_model.config), ids, chunk=100)
    got = next_token_logprobs(model, skv.hf.SkvCache(model.config), ids, chunk=100)
    kl = (ref.exp() * (ref - got)).sum(-1)
    # KL(exact || k4v2 defaults) per position; random weights spread attention widely, which is the
    # hard case for 2-bit values
    assert float(kl.max()) < 0.05 and float(kl.mean()) < 0.01, (float(kl.max()), float(kl.mean()))


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_left_padded_batch_equals_single_runs(name):
    model = make(name)
    lens = [30, 90, 170]
    prompts = [prompt(n, 10 + n)[0] for n in lens]
    ids = torch.zeros(3, max(lens), dtype=torch.long)
    mask = torch.zeros(3, max(lens), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, -len(p):] = p
        mask[i, -len(p):] = 1
    cache = skv.hf.SkvCache(model.config)
    with torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, cache=cache)
    for i, p in enumerate(prompts):
        alone = greedy(model, p[None], skv.hf.SkvCache(model.config), n=40)
        assert torch.equal(batch[i, -40:], alone[0, -40:]), i
        # padding is never stored: each sequence holds its own tokens only
        assert len(cache.layers[0].rows[i]) == lens[i] + 39


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_crop_then_regenerate_equals_a_run_without_the_rejected_tokens(name):
    model = make(name)
    ids, draft, nxt = prompt(150, 3), prompt(7, 4), prompt(5, 5)

    def feed(cache, tokens):  # one token per forward: the model computes every token's K/V alike
        return [model(tokens[:, i:i + 1], cache=cache, use_cache=True).logits for i in range(tokens.shape[1])]

    with torch.no_grad():
        spec = skv.hf.SkvCache(model.config)
        model(ids, cache=spec, use_cache=True)
        feed(spec, draft)  # 7 drafted tokens
        spec.crop(-5)  # 2 accepted
        assert spec.get_seq_length() == 152
        a = torch.cat(feed(spec, nxt), 1)
        fresh = skv.hf.SkvCache(model.config)
        model(ids, cache=fresh, use_cache=True)
        feed(fresh, draft[:, :2])
        b = torch.cat(feed(fresh, nxt), 1)
    assert torch.equal(a, b)


def test_prompt_lookup_decoding_crops_rejected_candidates():
    eager, model = make("llama", "eager"), make("llama")
    base = prompt(40, 6)
    ids = torch.cat([base] * 4, 1)  # a repetitive prompt: the lookup proposes candidates
    cache = skv.hf.SkvCache(model.config, key_bits=8, value_bits=8)
    crops = []
    original = cache.crop
    cache.crop = lambda n: (crops.append(n), original(n))[1]
    ref = greedy(model, ids, skv.hf.SkvCache(model.config, key_bits=8, value_bits=8), n=40)
    got = greedy(model, ids, cache, n=40, prompt_lookup_num_tokens=5)
    assert any(n < 0 for n in crops)  # candidates were rejected and taken back
    assert all(len(c) == ids.shape[1] + 39 for layer in cache.layers for c in layer.rows)
    # verifying candidates in one forward sees a block quantized that decoding token by token saw in
    # float32 (docs/cpu.md, "Prefill"): at 8 bits that moves logits far less than MARGIN, so the
    # tokens agree up to the first near-tie of the exact model
    with torch.no_grad():
        exact = eager(ref[:, :-1]).logits[0, ids.shape[1] - 1:]
    top2 = exact.topk(2, -1).values
    ties = ((top2[:, 0] - top2[:, 1]) <= MARGIN).nonzero()
    first_tie = int(ties[0]) if ties.numel() else 40
    assert first_tie >= 5
    n = ids.shape[1] + first_tie + 1
    assert torch.equal(got[:, :n], ref[:, :n])


def test_bfloat16_and_float32_models_agree_within_bf16_rounding():
    m32, m16 = make("llama"), make("llama", dtype=torch.bfloat16)
    ids = prompt(300, 6)
    with torch.no_grad():
        a = m32(ids, cache=skv.hf.SkvCache(m32.config), use_cache=True).logits[0, -50:]
        b = m16(ids, cache=skv.hf.SkvCache(m16.config), use_cache=True).logits[0, -50:].float()
        r16 = m16(ids, cache=DynamicCache(config=m16.config), use_cache=True).logits[0, -50:].float()
    # the bf16 model's own rounding bounds both: skv's cache adds little to it
    model_noise = float((r16 - a).abs().max())
    assert float((b - a).abs().max()) <= 1.5 * model_noise + 0.05 * float(a.abs().max()) / 8


def test_beam_search_reorders_the_caches():
    ref_model, model = make("llama", "eager"), make("llama")
    ids = prompt(140, 7)
    with torch.no_grad():
        ref = ref_model.generate(ids, max_new_tokens=20, num_beams=3, do_sample=False,
                                 cache=DynamicCache(config=ref_model.config))
        got = model.generate(ids, max_new_tokens=20, num_beams=3, do_sample=False,
                             cache=skv.hf.SkvCache(model.config, key_bits=8, value_bits=8))
    assert torch.equal(ref, got)


def test_without_attn_implementation_skv_the_fallback_dequantizes():
    eager, model = make("llama", "eager"), make("llama")
    ids = prompt(200, 8)
    cache = skv.hf.SkvCache(eager.config, key_bits=4, value_bits=2)
    assert cache.fallback
    with torch.no_grad():
        a = eager(ids, cache=cache, use_cache=True).logits
        b = model(ids, cache=skv.hf.SkvCache(model.config, key_bits=4, value_bits=2), use_cache=True).logits
        # decode steps: the fallback returns the whole cache, dequantized
        nxt = prompt(3, 9)
        a2 = torch.cat([eager(nxt[:, i:i + 1], cache=cache, use_cache=True).logits for i in range(3)], 1)
    # the same quantized cache read two ways: eager attention over dequantized tensors, and skv
    assert float((a - b).abs().max()) < 1e-4
    assert a2.shape == (1, 3, 256) and bool(torch.isfinite(a2).all())
    assert cache.get_seq_length() == 203 and len(cache.layers[0].rows[0]) == 203


def test_rotated_values_agree_between_skv_attention_and_the_fallback():
    # skv's attention rotates its output back; the fallback gets values dequantized and rotated back:
    # the same cache read two ways (Llama: the fallback's caches of window layers keep other tokens in
    # full precision than the window caches of skv's attention)
    eager, model = make("llama", "eager"), make("llama")
    ids = prompt(150, 10)
    opts = dict(key_bits=3, value_bits=2, residual=0, rotate_keys=True, rotate_values=True, sinks=4)
    with torch.no_grad():
        a = eager(ids, cache=skv.hf.SkvCache(eager.config, **opts), use_cache=True).logits
        b = model(ids, cache=skv.hf.SkvCache(model.config, **opts), use_cache=True).logits
        plain = model(ids, cache=skv.hf.SkvCache(model.config, **{**opts, "rotate_values": False}),
                      use_cache=True).logits
    assert float((a - b).abs().max()) < 1e-4
    assert float((b - plain).abs().max()) > 1e-3  # the option reached the caches


def test_a_plan_gives_every_layer_its_bits(tmp_path):
    model = make("llama")
    plan = {"layers": [{"layer": i, "key_bits": kb, "value_bits": vb}
                       for i, (kb, vb) in enumerate([(8, 4), (4, 2), (3, 3), (2, 2)])]}
    path = tmp_path / "plan.json"
    path.write_text(__import__("json").dumps(plan))
    cache = skv.hf.SkvCache(model.config, plan=str(path))
    greedy(model, prompt(20, 9), cache, n=4)
    assert [(l.rows[0].key_bits, l.rows[0].value_bits) for l in cache.layers] == [(8, 4), (4, 2), (3, 3), (2, 2)]
    # a layer's rotate_values (a loop plan's) overrides the cache's
    plan["layers"][1]["rotate_values"] = True
    cache = skv.hf.SkvCache(model.config, plan=plan, rotate_keys=True, rotate_values=False, sinks=4, clip=False)
    greedy(model, prompt(20, 9), cache, n=2)
    assert [l.rows[0].rotate_values for l in cache.layers] == [False, True, False, False]
    # and its rotate_keys (a plan over tables measured with and without the key rotation)
    plan["layers"][1]["rotate_keys"] = False
    cache = skv.hf.SkvCache(model.config, plan=plan, rotate_keys=True, rotate_values=True, sinks=4,
                            lloyd_max_values=True, int8_ring=True)
    greedy(model, prompt(20, 9), cache, n=2)
    assert [l.rows[0].rotate_keys for l in cache.layers] == [True, False, True, True]
    with pytest.raises(ValueError, match="layers 0..3"):
        skv.hf.SkvCache(model.config, plan={"layers": plan["layers"][:3]})
    with pytest.raises(ValueError, match="skv plan --json"):
        skv.hf.SkvCache(model.config, plan={"layer": []})


def test_bad_calls_raise_and_change_nothing():
    model = make("llama")
    ids = prompt(50, 11)
    cache = skv.hf.SkvCache(model.config, max_tokens=60)
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
        before = [len(c) for l in cache.layers for c in l.rows]
        with pytest.raises(ValueError, match="past the capacity"):
            model(prompt(20, 12), cache=cache, use_cache=True)  # too many tokens
        assert [len(c) for l in cache.layers for c in l.rows] == before and cache.get_seq_length() == 50
        layer = cache.layers[0]
        k = torch.zeros(1, 2, 1, 64)
        with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
            layer.commit(k.double(), k.double(), None)
        with pytest.raises(ValueError, match="skv runs on the CPU"):
            layer.commit(k.to("meta"), k.to("meta"), None)
        with pytest.raises(ValueError, match="NaN or Inf"):
            layer.commit(k + float("nan"), k, None)
        with pytest.raises(ValueError, match="KV heads"):
            layer.commit(torch.zeros(1, 3, 1, 64), torch.zeros(1, 3, 1, 64), None)
        with pytest.raises(ValueError, match="batch of 2"):
            layer.update(torch.zeros(2, 2, 1, 64), torch.zeros(2, 2, 1, 64))
        assert [len(c) for l in cache.layers for c in l.rows] == before
        # a float64 model: refused before anything is stored
        m64 = make("llama", dtype=torch.float64)
        c64 = skv.hf.SkvCache(m64.config)
        with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
            m64(ids, cache=c64, use_cache=True)
        assert c64.get_seq_length() == 0


def test_logit_softcapping_is_a_clear_error():
    if not hasattr(transformers, "Gemma2Config"):
        pytest.skip("no Gemma 2 in this transformers")
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(**{**COMMON, "sliding_window": WINDOW, "query_pre_attn_scalar": 64,
                                       "attn_logit_softcapping": 50.0})
    cfg._attn_implementation = "skv"
    model = transformers.Gemma2ForCausalLM(cfg).eval()
    with pytest.raises(NotImplementedError, match="soft-caps its attention logits"):
        with torch.no_grad():
            model(prompt(10, 13), cache=skv.hf.SkvCache(model.config), use_cache=True)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_rope_frequencies_reproduce_the_models_rotary_embedding(name):
    # Gemma 3 turns its sliding and full layers by different frequencies (rope_local_base_freq)
    model = make(name)
    freqs = skv.hf.rope_frequencies(model)
    types = getattr(model.config, "layer_types", None) or ["full_attention"] * 4
    assert len(freqs) == 4 and all(len(f) == 32 for f in freqs)
    x = torch.zeros(1, 1, 64)
    pos = torch.arange(300)[None]
    for layer, f in enumerate(freqs):
        emb = model.model.rotary_emb
        cos, sin = emb(x, pos, types[layer]) if name == "gemma3" else emb(x, pos)
        a = np.outer(np.arange(300), np.asarray(f, np.float64))
        np.testing.assert_allclose(cos[0].numpy(), np.concatenate([np.cos(a)] * 2, -1), atol=2e-4)
        np.testing.assert_allclose(sin[0].numpy(), np.concatenate([np.sin(a)] * 2, -1), atol=2e-4)
    if name == "gemma3":
        assert freqs[0] != freqs[1]
    with pytest.raises(ValueError, match="layers"):
        skv.hf.SkvCache(model.config, rope_frequencies=freqs[:2])


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_keys_stored_before_the_rotary_embedding_attend_like_the_model(name):
    # the set without rotated keys, given the model's frequencies, stores R(-t) k and attends with R(t)
    # of it: at 8 bits the logits stay as close to the exact ones as with keys stored as given (a
    # wrong turn moves them by tenths)
    ref_model, model = make(name, "eager"), make(name)
    ids = prompt(200, 3)
    opts = dict(key_bits=8, value_bits=8, residual=0, rotate_keys=False, rotate_values=True, sinks=4,
                int8_ring=True, lloyd_max_values=True)
    with torch.no_grad():
        exact = ref_model(ids).logits[0]
        cache = skv.hf.SkvCache(model.config, **opts, rope_frequencies=skv.hf.rope_frequencies(model))
        quant = model(ids, cache=cache, use_cache=True).logits[0]
        given = model(ids, cache=skv.hf.SkvCache(model.config, **opts), use_cache=True).logits[0]
    assert all(layer.rows[0].pre_rope_keys and any(layer.rows[0].rope_frequencies) for layer in cache.layers)
    err, err_given = float((quant - exact).abs().max()), float((given - exact).abs().max())
    assert err < max(MARGIN / 2, 1.5 * err_given) and err_given < MARGIN, (err, err_given)


def test_memory_is_counted_as_held():
    model = make("llama")
    cache = skv.hf.SkvCache(model.config)
    greedy(model, prompt(300, 14), cache, n=2)
    held = cache.memory_bytes
    exact = 4 * 2 * 2 * 301 * 64 * 4  # layers x K,V x kv heads x tokens x dim x float32
    assert 0 < held < exact and held == sum(c.memory_bytes for l in cache.layers for c in l.rows)
    assert np.isfinite(held)


def test_window_chunk_bounds_what_window_layers_hold():
    # Gemma 3's window layers (window 48) hold (48 + window_chunk - 2) // 64 + 2 pages of 64 tokens
    # once the stream has filled them (450 tokens): 6 with the default chunk of 256, 2 with
    # one-query steps; the full layers hold the same. Fed one
    # token per forward, both read the same tokens: the same log-probabilities, bit for bit (with
    # residual=0, past the window, from pages the narrow cache has reused).
    model = make("gemma3")
    ids = prompt(450, 21)
    kw = dict(key_bits=4, value_bits=2, residual=0)
    wide, narrow = skv.hf.SkvCache(model.config, **kw), skv.hf.SkvCache(model.config, window_chunk=1, **kw)
    lw = next_token_logprobs(model, wide, ids)
    ln = next_token_logprobs(model, narrow, ids)
    page = 64 * 2 * 64 * 6 // 8 + (2 * 64 * 2 + 64 * 2) * 2 * 2  # k4v2 codes, fp16 scale + zero per group
    for a, b in zip(wide.layers, narrow.layers):
        if a.is_sliding:
            assert (a.rows[0].max_chunk, b.rows[0].max_chunk) == (256, 1)
            assert a.memory_bytes - b.memory_bytes == 4 * page
        else:
            assert a.memory_bytes == b.memory_bytes
    assert skv.hf.SkvCache(model.config, token_by_token=True).layers[0].window_chunk == 1
    assert torch.equal(lw, ln)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="window_chunk"):
            skv.hf.SkvCache(model.config, window_chunk=bad)
    with pytest.raises(ValueError, match="token_by_token"):
        skv.hf.SkvCache(model.config, token_by_token=True, window_chunk=16)


def test_reset_takes_a_new_batch_size():
    model = make("llama")
    cache = skv.hf.SkvCache(model.config)
    greedy(model, prompt(20, 15), cache, n=3)
    cache.reset()
    assert cache.get_seq_length() == 0
    ids = torch.cat([prompt(20, 16), prompt(20, 17)])
    out = greedy(model, ids, cache, n=3)
    assert out.shape == (2, 23) and len(cache.layers[0].rows) == 2


def test_a_refused_crop_changes_no_sequence_of_the_batch():
    model = make("llama")
    lens = [60, 100]  # left-padded: the rows' rings stand at different tokens
    ids = torch.zeros(2, 100, dtype=torch.long)
    mask = torch.zeros(2, 100, dtype=torch.long)
    for i, n in enumerate(lens):
        ids[i, -n:], mask[i, -n:] = prompt(n, 30 + i)[0], 1
    cache = skv.hf.SkvCache(model.config, residual=0, rollback=0)
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache, use_cache=True)
    rows = cache.layers[0].rows
    # a depth the first row can take back and the second cannot: the crop must fail before the first
    n = next(n for n in range(1, 60) if rows[0].can_truncate(60 - n) and not rows[1].can_truncate(100 - n))
    before = [[(c.copy(), len(c)) for c in layer.rows] for layer in cache.layers]
    with pytest.raises(ValueError, match="cannot take back"):
        cache.crop(-n)
    assert cache.get_seq_length() == 100
    q = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    for layer, saved in zip(cache.layers, before):
        for c, (copy, length) in zip(layer.rows, saved):
            assert len(c) == length and np.array_equal(c.decode(q), copy.decode(q))
