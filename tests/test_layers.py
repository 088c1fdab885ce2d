import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import (
    FeedForward,
    LearnedPositionalEncoding,
    MultiHeadAttention,
    Residual,
    SinusoidalPositionalEncoding,
    TransformerBlock,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from helpers.layers import layer_head_masks


def copy_to_torch_mha(m: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    ref = torch.nn.MultiheadAttention(m.d_model, m.n_heads, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([m.q_proj.weight, m.k_proj.weight, m.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([m.q_proj.bias, m.k_proj.bias, m.v_proj.bias]))
        ref.out_proj.weight.copy_(m.out_proj.weight)
        ref.out_proj.bias.copy_(m.out_proj.bias)
    return ref


def test_sdpa_matches_torch():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True
    out, w = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))
    assert (w[..., ~mask] == 0).all()


@pytest.mark.parametrize("need_weights", [False, True])
def test_mha_matches_torch_self_and_cross(need_weights):
    torch.manual_seed(0)
    m = MultiHeadAttention(16, 4).eval()
    ref = copy_to_torch_mha(m)
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    mask = causal_mask(5)
    torch.testing.assert_close(m(x, mask=mask, need_weights=need_weights), ref(x, x, x, attn_mask=~mask)[0])
    am = torch.ones(2, 9, dtype=torch.long)
    am[1, 6:] = 0
    torch.testing.assert_close(m(x, mem, padding_mask(am), need_weights),
                               ref(x, mem, mem, key_padding_mask=~am.bool())[0])


def test_mha_under_cpu_autocast_matches_float32():
    # under bf16 autocast on the CPU the attention itself runs in float32 (faster there); the result must agree
    torch.manual_seed(0)
    m = MultiHeadAttention(32, 4).eval()
    x, mask = torch.randn(3, 10, 32), causal_mask(10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x, mask=mask)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), m(x, mask=mask), atol=3e-2, rtol=3e-2)


def test_mha_forward_cached_equals_causal_forward():
    torch.manual_seed(0)
    m = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    full = m(x, mask=causal_mask(6))
    out, past = m.forward_cached(x[:, :4], None, causal_mask(4))  # the prompt, then one token at a time
    steps = [out]
    for t in (4, 5):
        out, past = m.forward_cached(x[:, t:t + 1], past)  # a single new query may see every cached key
        steps.append(out)
    assert past[0].shape == (2, 4, 6, 4)
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_mha_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="positive"):
        MultiHeadAttention(0, 2)
    m = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="does not broadcast"):
        m(torch.randn(2, 4, 8), mask=torch.ones(3, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="2 to 4 dims"):
        m(torch.randn(2, 4, 8), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        m(torch.randn(2, 4, 8), mask=torch.ones(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="d_model=8"):
        m(torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="kv must be"):
        m(torch.randn(2, 4, 8), kv=torch.randn(3, 4, 8))
    with pytest.raises(ValueError, match="seq_len"):
        padding_mask(torch.ones(2, 3, 4))


def test_residual_pre_and_post_norm():
    torch.manual_seed(0)
    x, f = torch.randn(2, 3, 8), torch.nn.Linear(8, 8)
    pre, post = Residual(8, norm_first=True).eval(), Residual(8, norm_first=False).eval()
    torch.testing.assert_close(pre(x, f), x + f(F.layer_norm(x, (8,))))
    torch.testing.assert_close(post(x, f), F.layer_norm(x + f(x), (8,)))


def test_block_matches_torch_encoder_layer():
    """Our post-norm ReLU block equals torch.nn.TransformerEncoderLayer with the same weights."""
    torch.manual_seed(0)
    ours = TransformerBlock(16, 4, 32, norm_first=False, activation="relu").eval()
    ref = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    ref.self_attn.load_state_dict(copy_to_torch_mha(ours.self_attn).state_dict())
    with torch.no_grad():
        for a, b in [(ref.linear1, ours.ff.fc1), (ref.linear2, ours.ff.fc2), (ref.norm1, ours.res1.norm),
                     (ref.norm2, ours.res2.norm)]:
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(ours(x), ref(x))


def test_block_cross_attention_arguments():
    b = TransformerBlock(8, 2, cross_attention=True)
    assert b(torch.randn(1, 3, 8), memory=torch.randn(1, 5, 8)).shape == (1, 3, 8)
    with pytest.raises(ValueError, match="memory"):
        b(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="cross_attention=False"):
        TransformerBlock(8, 2)(torch.randn(1, 3, 8), memory=torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match="activation"):
        FeedForward(8, 16, activation="swish-ish")


def test_positional_encodings():
    pe = SinusoidalPositionalEncoding(8, max_len=50)
    z = pe(torch.zeros(1, 10, 8))[0]
    torch.testing.assert_close(z[:, 0], torch.sin(torch.arange(10.0)))
    torch.testing.assert_close(z[:, 1], torch.cos(torch.arange(10.0)))
    with pytest.raises(ValueError, match="even"):
        SinusoidalPositionalEncoding(7)
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.zeros(1, 51, 8))
    with pytest.raises(ValueError, match="max_len"):
        LearnedPositionalEncoding(4, 8)(torch.zeros(1, 5, 8))


def test_mha_d_head_independent_of_d_model():
    torch.manual_seed(0)
    m = MultiHeadAttention(10, 3, d_head=4).eval()  # inner width 12 != d_model 10
    assert (m.q_proj.weight.shape, m.out_proj.weight.shape, m.inner_dim) == ((12, 10), (10, 12), 12)
    x = torch.randn(2, 5, 10)
    q, k, v = (p(x).view(2, 5, 3, 4).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    ref = m.out_proj(scaled_dot_product_attention(q, k, v, causal_mask(5))[0].transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(m(x, mask=causal_mask(5)), ref)
    torch.testing.assert_close(m(x, mask=causal_mask(5), need_weights=True), ref)
    assert MultiHeadAttention(16, 4).d_head == MultiHeadAttention(16, 4, d_head=None).d_head == 4
    with pytest.raises(ValueError, match="d_head must be a positive int"):
        MultiHeadAttention(16, 4, d_head=0)


@pytest.mark.parametrize("d_head", [None, 3])
@pytest.mark.parametrize("heads", [[0], [1, 3], [3, 0, 2], 2])
def test_pruned_heads_equal_masked_heads(heads, d_head):
    torch.manual_seed(0)
    m = MultiHeadAttention(16, 4, d_head=d_head).eval()
    x, mask = torch.randn(2, 6, 16), causal_mask(6)
    keep = torch.ones(4)
    keep[heads] = 0
    pruned = copy.deepcopy(m)
    pruned.prune_heads(heads)
    n_left = 4 - (1 if isinstance(heads, int) else len(heads))
    assert pruned.n_heads == n_left and pruned.q_proj.weight.shape[0] == n_left * m.d_head
    assert pruned.out_proj.weight.shape[1] == n_left * m.d_head
    for need_weights in (False, True):
        torch.testing.assert_close(pruned(x, mask=mask, need_weights=need_weights),
                                   m(x, mask=mask, need_weights=need_weights, head_mask=keep))
    torch.testing.assert_close(pruned.forward_cached(x, None, mask)[0], m.forward_cached(x, None, mask, keep)[0])
    assert not torch.equal(m(x, mask=mask, head_mask=keep), m(x, mask=mask))  # the mask does remove something


def test_head_mask_per_batch_row_and_all_zero():
    torch.manual_seed(0)
    m = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    hm = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.5, 1.0, 0.0]])
    out = m(x, head_mask=hm)
    for b in range(2):
        torch.testing.assert_close(out[b], m(x[b:b + 1], head_mask=hm[b])[0])
    torch.testing.assert_close(m(x, head_mask=torch.zeros(4)), m.out_proj.bias.expand(2, 5, 16))
    m(x, head_mask=hm, need_weights=True)
    assert (m.attn_weights[0, 1] == 0).all() and m.attn_weights[0, 0].sum(-1).allclose(torch.ones(5))
    with pytest.raises(ValueError, match=r"head_mask must be \(n_heads,\) = \(4,\)"):
        m(x, head_mask=torch.ones(3))
    with pytest.raises(ValueError, match=r"\(batch, n_heads\) = \(2, 4\)"):
        m(x, head_mask=torch.ones(3, 4))
    with pytest.raises(TypeError, match="head_mask must be a torch.Tensor"):
        m(x, head_mask=[1, 0, 1, 1])


def test_prune_heads_bad_arguments():
    m = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match="cannot prune all 4 heads"):
        m.prune_heads([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"out of range.*n_heads=4"):
        m.prune_heads([4])
    with pytest.raises(ValueError, match=r"out of range"):
        m.prune_heads([-1])
    with pytest.raises(ValueError, match="duplicate"):
        m.prune_heads([1, 1])
    with pytest.raises(TypeError, match="heads must be ints"):
        m.prune_heads([0.5])
    m.prune_heads([])
    assert m.n_heads == 4
    m.prune_heads([1, 2])
    m.prune_heads([0])  # indices of the heads that are left
    assert m.n_heads == 1 and m.q_proj.weight.shape == (4, 16)
    with pytest.raises(ValueError, match="cannot prune all 1 heads"):
        m.prune_heads(0)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("cross", [False, True])
def test_block_forward_cached_equals_causal_forward(norm_first, cross):
    """Step-by-step cached self-attention == one causal forward, for pre-norm (GPT) and post-norm (BERT) blocks."""
    torch.manual_seed(0)
    b = TransformerBlock(16, 4, 32, norm_first=norm_first, cross_attention=cross).eval()
    x, hm = torch.randn(2, 7, 16), torch.tensor([1.0, 0.0, 1.0, 1.0])
    mem = dict(memory=torch.randn(2, 3, 16)) if cross else {}
    full = b(x, mask=causal_mask(7), head_mask=hm, **mem)
    out, past = b.forward_cached(x[:, :4], None, causal_mask(4), head_mask=hm, **mem)
    steps = [out]
    for t in (4, 5, 6):
        out, past = b.forward_cached(x[:, t:t + 1], past, head_mask=hm, **mem)
        steps.append(out)
    assert past[0].shape == (2, 4, 7, 4)
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_forward_cached_with_a_prefix(norm_first):
    """Prefix tuning: keys/values of P prefix vectors, then every token sees all of them (no mask) — the same as
    one bidirectional forward over prefix + tokens, read at the tokens."""
    torch.manual_seed(0)
    b = TransformerBlock(16, 4, 32, norm_first=norm_first).eval()
    prefix, x = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    _, past = b.forward_cached(prefix, None)
    out, (k, v) = b.forward_cached(x, past)
    torch.testing.assert_close(out, b(torch.cat([prefix, x], 1))[:, 3:])
    am = torch.ones(2, 8, dtype=torch.long)
    am[1, 6:] = 0  # padding at the end of row 1 (prefix positions are 0..2)
    out = b.forward_cached(x, past, padding_mask(am))[0]
    torch.testing.assert_close(out[1, :3], b(torch.cat([prefix, x], 1)[1:, :6])[0, 3:])
    assert k.shape == (2, 4, 8, 4)
    with pytest.raises(ValueError, match=r"past must be \(keys, values\)"):
        b.forward_cached(x, (k[:, :2], v[:, :2]))


@pytest.mark.parametrize("fp32_attention", [True, False])
def test_cpu_autocast_attention_switch(monkeypatch, fp32_attention):
    import helpers.layers as L
    monkeypatch.setattr(L, "CPU_AUTOCAST_ATTENTION_FP32", fp32_attention)
    torch.manual_seed(0)
    m = MultiHeadAttention(32, 4).eval()
    x, mask = torch.randn(3, 10, 32), causal_mask(10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x, mask=mask)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), m(x, mask=mask), atol=3e-2, rtol=3e-2)
    m16 = copy.deepcopy(m).to(torch.bfloat16)  # a model stored in bf16, without autocast
    assert m16(x.bfloat16(), mask=mask).dtype == torch.bfloat16


def test_layer_head_masks():
    assert layer_head_masks(None, 3) == [None] * 3
    hm = torch.ones(3, 4)
    assert [t.shape for t in layer_head_masks(hm, 3)] == [(4,)] * 3
    row = hm[0]
    assert layer_head_masks(row, 2)[1] is row
    with pytest.raises(ValueError, match=r"n_layers=2"):
        layer_head_masks(hm, 2)
    with pytest.raises(ValueError, match="list of 2 per-layer masks"):
        layer_head_masks([None], 2)
