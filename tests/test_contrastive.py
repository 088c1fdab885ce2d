"""helpers.contrastive: NT-Xent, digit augmentation, Fréchet distance, embedding-space attacks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.contrastive import (
    add_to_output,
    augment_digits,
    embedding_attack,
    frechet_distance,
    gaussian_stats,
    nt_xent,
)


def loop_nt_xent(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, losses = len(z1), []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = torch.stack([z[i] @ z[k] / t for k in range(2 * n) if k != i])
        others = [k for k in range(2 * n) if k != i]
        losses.append(-sims[others.index(pos)] + torch.logsumexp(sims, 0))
    return torch.stack(losses).mean()


def test_nt_xent_matches_loop_and_prefers_aligned_views():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(nt_xent(z1, z2, 0.3), loop_nt_xent(z1, z2, 0.3))
    assert nt_xent(z1, z1 + 0.01 * torch.randn(5, 8), 0.3) < nt_xent(z1, z2, 0.3)


@pytest.mark.parametrize("args", [
    (torch.randn(4, 8), torch.randn(4, 8), 0.0), (torch.randn(4, 8), torch.randn(4, 8), -1.0),
    (torch.randn(1, 8), torch.randn(1, 8), 0.5), (torch.randn(4, 8), torch.randn(3, 8), 0.5),
    (torch.randn(4, 8), torch.randn(4, 9), 0.5)])
def test_nt_xent_bad_input(args):
    with pytest.raises(ValueError):
        nt_xent(*args)


def test_augment_digits_shapes_and_randomness():
    x = torch.zeros(3, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    g = torch.Generator().manual_seed(0)
    a, b = augment_digits(x, g), augment_digits(x, g)
    assert a.shape == x.shape and not torch.allclose(a, b)
    same = augment_digits(x, None, scale=(1.0, 1.0), degrees=0.0, translate=0.0, noise=0.0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)  # the identity transform changes nothing
    with pytest.raises(ValueError):
        augment_digits(torch.zeros(28, 28))
    with pytest.raises(ValueError):
        augment_digits(x, scale=(0.0, 1.0))


def test_frechet_distance_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = np.diag(rng.uniform(0.5, 2, 4)), np.diag(rng.uniform(0.5, 2, 4))
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(np.diag(s1)) - np.sqrt(np.diag(s2))) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-10)
    a = rng.normal(size=(4, 4))
    s = a @ a.T + np.eye(4)
    assert frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mu1, s, mu2, 4 * s) == pytest.approx(((mu1 - mu2) ** 2).sum() + np.trace(s), rel=1e-8)
    mu, cov = gaussian_stats(rng.normal(size=(100, 3)))
    assert mu.shape == (3,) and cov.shape == (3, 3)
    with pytest.raises(ValueError):
        frechet_distance(mu1, s1, mu2[:3], s2)
    with pytest.raises(ValueError):
        gaussian_stats(np.zeros((1, 3)))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 2)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


def test_perturbation_reaches_embeddings_and_is_restored():
    torch.manual_seed(0)
    m, ids, y = Tiny(), torch.randint(0, 10, (3, 5)), torch.tensor([0, 1, 0])
    before = m(ids).detach().clone()
    loss_fn = lambda: F.cross_entropy(m(ids), y)  # noqa: E731
    clean = loss_fn().item()
    delta = embedding_attack(loss_fn, m.emb, 0.5, steps=3)
    assert delta.shape == (3, 5, 4)
    assert torch.all(delta.flatten(1).norm(dim=1) <= 0.5 + 1e-5)
    seen = []
    with add_to_output(m.emb, delta):  # a hook registered after ours sees what the rest of the model receives
        h = m.emb.register_forward_hook(lambda mod, i, o: seen.append(o.detach().clone()))
        attacked = loss_fn().item()
        h.remove()
    torch.testing.assert_close(seen[0], m.emb(ids) + delta)  # the embedding output itself was shifted by delta
    assert attacked > clean
    torch.testing.assert_close(m(ids), before, rtol=0, atol=0)  # restored exactly after the step
    assert not m.emb._forward_hooks and all(p.grad is None for p in m.parameters())


def test_attack_rejects_wrong_module_and_negative_epsilon():
    m, ids, y = Tiny(), torch.randint(0, 10, (3, 5)), torch.tensor([0, 1, 0])
    loss_fn = lambda: F.cross_entropy(m(ids), y)  # noqa: E731
    with pytest.raises(ValueError, match="never called"):
        embedding_attack(loss_fn, nn.Embedding(10, 4), 0.1)  # a module the model does not use: the emb_name bug
    with pytest.raises(ValueError):
        embedding_attack(loss_fn, m.emb, -0.1)
    with pytest.raises(TypeError):
        embedding_attack(loss_fn, "emb", 0.1)
    with pytest.raises(ValueError, match="never called"):
        with add_to_output(nn.Embedding(10, 4), torch.zeros(3, 5, 4)):
            loss_fn()
    with pytest.raises(ValueError, match="shape"):
        with add_to_output(m.emb, torch.zeros(2, 5, 4)):
            loss_fn()
