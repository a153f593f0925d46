"""examples/python/emulate_hf.py on tiny random-weight models (nothing is downloaded): where nothing
is quantized its attention is the model's own, pre-RoPE keys put back through the rotary embedding
are the post-RoPE ones, and key groups start after the sinks, as skv's do."""
import os
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))

_threads = os.environ.get("OMP_NUM_THREADS")
import emulate_hf  # noqa: E402  (sets OMP_NUM_THREADS=1 for its own runs, as the examples do)
from test_hf import make, prompt  # noqa: E402

# not for the other tests' subprocesses (test_bit_exact.py's reference must use the package's threads)
if _threads is None:
    os.environ.pop("OMP_NUM_THREADS", None)
else:
    os.environ["OMP_NUM_THREADS"] = _threads


def logits(model, ids, config):
    emulate_hf.Emulation.config = config
    try:
        with torch.no_grad():
            return model(ids).logits[0]
    finally:
        emulate_hf.Emulation.config = None


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_unquantized_emulation_is_the_models_attention(name):
    ids = prompt(100, 1)
    with torch.no_grad():
        exact = make(name, attn="eager").eval()(ids).logits[0]
    model = make(name, attn="skv_emulated")
    assert float((logits(model, ids, None) - exact).abs().max()) < 1e-4
    # 16 bits: nothing quantized; the value rotation is undone, the exact ring is exact
    for c in ["k16v16+f32ring", "k16v16+unrotk+f32ring", "k16v16+unrotk+prerope+f32ring"]:
        assert float((logits(model, ids, emulate_hf.parse(c)) - exact).abs().max()) < 1e-4, c
    # quantized keys and values move the logits, 8 bits far less than 2 (a step 85x finer)
    d8, d2 = (float((logits(model, ids, emulate_hf.parse(f"k{b}v{b}+unrotk+prerope")) - exact).abs().max())
              for b in (8, 2))
    assert 0 < d8 < d2 / 8


def test_key_groups_start_after_the_sinks():
    # every channel constant over tokens 4+32j .. 4+32j+31 (values exact in fp16): exact only when
    # the groups are those
    g = torch.arange(4 + 96) - 4
    k = torch.where(g < 0, 7.0, (g // 32).float() * 0.5 + 1.0)[None, :, None].expand(2, -1, 8).contiguous()
    k = k + torch.arange(8).float() * 0.25
    q = emulate_hf.keys_per_channel(k, 2, 32)
    assert torch.equal(q, k)
    shifted = torch.cat([k[:, :1], k[:, :-1]], 1)  # groups straddle the steps: not exact at 2 bits
    assert not torch.equal(emulate_hf.keys_per_channel(shifted, 2, 32), shifted)


def test_bad_configurations_exit_with_a_message():
    for bad in ["k3", "k3v3+prerope", "k3v3+unrotk+prerope+hot8", "k3v3+r48", "k3v3+nope"]:
        with pytest.raises(SystemExit):
            emulate_hf.parse(bad)
    c = emulate_hf.parse("k3v2+unrotk+kg64+vg256+hot16+r128")
    assert (c["kb"], c["vb"], c["rotk"], c["kg"], c["vg"], c["hot"], c["residual"]) == (3, 2, False, 64, 256, 16, 128)


def test_ring_keys_are_coded_rotated_like_skvs():
    # unrotated keys' 8-bit rows are coded in the rotated basis: an outlier channel costs little
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 64, generator=g)
    x[..., 5] *= 50
    plain = emulate_hf.int8_rows(x)
    assert torch.equal(emulate_hf.ring_keys(x, emulate_hf.parse("k16v16+unrotk+plainring")), plain)
    assert torch.equal(emulate_hf.ring_keys(x, emulate_hf.parse("k16v16")), plain)  # rotated keys: rows as they are
    rotated = emulate_hf.ring_keys(x, emulate_hf.parse("k16v16+unrotk"))
    assert 0 < float((rotated - x).pow(2).mean()) < float((plain - x).pow(2).mean()) / 4
