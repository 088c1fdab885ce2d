import math

import pytest
import torch
import torch.nn.functional as F

from helpers.vit import (
    PatchEmbedding,
    ViT,
    attention_entropy,
    attention_maps,
    attention_rollout,
    mean_attention_distance,
    patchify,
    to_hf,
)


def small_vit(**kw):
    torch.manual_seed(0)
    return ViT(image_size=28, patch_size=7, d_model=32, depth=2, n_heads=4, **kw).eval()


def test_patchify_and_conv_embedding_agree():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 28, 28)
    pe = PatchEmbedding(28, 7, 3, 16)
    flat = patchify(x, 7)
    assert flat.shape == (2, 16, 3 * 49)
    ref = flat @ pe.proj.weight.view(16, -1).T + pe.proj.bias
    torch.testing.assert_close(pe(x), ref)
    torch.testing.assert_close(flat[0, 1], x[0, :, 0:7, 7:14].reshape(-1))  # row-major patch order


def test_image_size_not_divisible_raises():
    with pytest.raises(ValueError, match="not divisible by patch_size=5"):
        PatchEmbedding(28, 5)
    with pytest.raises(ValueError, match="not divisible by patch_size=7"):
        PatchEmbedding(28, 7)(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 1, 28, 30), 7)
    with pytest.raises(ValueError, match="built for image_size"):
        PatchEmbedding(28, 7)(torch.zeros(1, 1, 14, 14))


def test_channel_mismatch_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="3 channels but the model expects in_channels=1"):
        small_vit()(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="must be 4-D"):
        small_vit()(torch.zeros(1, 28, 28))
    with pytest.raises(TypeError):
        PatchEmbedding()([[0.0]])
    with pytest.raises(ValueError, match="patch_size"):
        PatchEmbedding(28, 0)


@pytest.mark.parametrize("head_hidden", [None, 24])
def test_matches_transformers(head_hidden):
    m = small_vit(head_hidden=head_hidden)
    with torch.no_grad():  # perturb LayerNorms so the check is not trivially at their init values
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(3, 1, 28, 28)
    hf = to_hf(m)
    with torch.no_grad():
        theirs = hf(pixel_values=x).logits if head_hidden is None else m.head(hf(pixel_values=x).pooler_output)
        torch.testing.assert_close(m(x), theirs, rtol=1e-5, atol=1e-5)


def test_export_without_positions_raises():
    with pytest.raises(ValueError, match="pos_embedding=True"):
        to_hf(small_vit(pos_embedding=False))


def test_no_position_embedding_is_permutation_invariant():
    m, x = small_vit(pos_embedding=False), torch.randn(2, 1, 28, 28)
    perm = torch.randperm(16)
    shuffled = F.fold(patchify(x, 7)[:, perm].transpose(1, 2), 28, 7, stride=7)
    with torch.no_grad():
        torch.testing.assert_close(m(shuffled), m(x), rtol=1e-4, atol=1e-5)


def test_attention_measures():
    m, x = small_vit(), torch.randn(2, 1, 28, 28)
    attn = attention_maps(m, x)
    assert attn.shape == (2, 2, 4, 17, 17)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 4, 17))
    roll = attention_rollout(attn)
    torch.testing.assert_close(roll.sum(-1), torch.ones(2, 17))
    # identity attention: rollout is the identity, distance 0, entropy 0
    eye = torch.eye(17).expand(1, 1, 1, 17, 17)
    torch.testing.assert_close(attention_rollout(eye), torch.eye(17)[None])
    assert mean_attention_distance(eye, (4, 4), 7).item() == 0
    assert attention_entropy(eye).item() == pytest.approx(0, abs=1e-6)
    uni = torch.full((1, 1, 1, 17, 17), 1 / 17)
    assert attention_entropy(uni).item() == pytest.approx(math.log(17), rel=1e-5)
    # two patches one step apart, all attention on the neighbour: distance = patch size
    one = torch.zeros(1, 1, 1, 5, 5)
    one[..., 0, 0] = 1
    one[..., 1, 2], one[..., 2, 1], one[..., 3, 4], one[..., 4, 3] = 1, 1, 1, 1
    assert mean_attention_distance(one, (2, 2), 7).item() == pytest.approx(7.0)
    with pytest.raises(ValueError, match="grid"):
        mean_attention_distance(attn, (3, 3), 7)
    with pytest.raises(ValueError, match="layers, batch, heads"):
        attention_rollout(attn[0])
