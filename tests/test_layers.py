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
