"""Chapter 08: the NT-Xent (InfoNCE) loss, digit augmentation for SimCLR, the Fréchet distance, and adversarial
perturbations in embedding space (FGM / PGD) applied through an explicitly given embedding module."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["nt_xent", "augment_digits", "gaussian_stats", "frechet_distance", "add_to_output", "embedding_attack"]


def _positive(name: str, v, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'≥' if allow_zero else '>'} 0, got {v!r}")
    return float(v)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent (SimCLR's normalized-temperature cross-entropy) of two views ``z1``, ``z2`` (batch, dim): row i of z1
    and row i of z2 are a positive pair, the other 2·batch − 2 rows are its negatives. Mean over all 2·batch anchors."""
    temperature = _positive("temperature", temperature)
    if not isinstance(z1, Tensor) or not isinstance(z2, Tensor):
        raise TypeError(f"z1 and z2 must be tensors (batch, dim), got {type(z1).__name__} and {type(z2).__name__}")
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must be two views of the same batch, both (batch, dim); got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"NT-Xent needs a batch of at least 2 (the other images are the negatives), got {n}")
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # no self-pairs
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)  # index of each anchor's positive
    return F.cross_entropy(sim, target)


def augment_digits(x: Tensor, generator: torch.Generator | None = None, scale: tuple[float, float] = (0.6, 1.0),
                   degrees: float = 15.0, translate: float = 0.1, noise: float = 0.05) -> Tensor:
    """A random view of each image in ``x`` (batch, 1, H, W), all in one affine ``grid_sample``: a random resized
    crop (side ``scale`` of the image), a rotation of ±``degrees``, a shift of ±``translate`` (fraction of the side),
    then Gaussian noise of std ``noise``. No horizontal flip: a mirrored 2, 3, 7 is not a digit."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (batch, channels, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale must be (low, high) with 0 < low ≤ high ≤ 1, got {scale!r}")
    _positive("degrees", degrees, allow_zero=True), _positive("translate", translate, allow_zero=True)
    _positive("noise", noise, allow_zero=True)
    b = x.shape[0]
    r = torch.rand(b, 4, generator=generator).to(x.device)
    s = lo + (hi - lo) * r[:, 0]                       # crop side as a fraction of the image: zoom in by 1/s
    a = (2 * r[:, 1] - 1) * math.radians(degrees)
    t = (2 * r[:, 2:] - 1) * translate * 2             # grid coordinates span [-1, 1], a width of 2
    cos, sin = torch.cos(a) * s, torch.sin(a) * s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    if noise:
        out = out + noise * torch.randn(out.shape, generator=generator).to(x.device)
    return out


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of ``features`` (n, d), n ≥ 2."""
    f = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (n, d) with n ≥ 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½): the Fréchet (2-Wasserstein²) distance of two Gaussians.
    The trace of the matrix square root is the sum of square roots of the eigenvalues of Σ1^½ Σ2 Σ1^½ (symmetric
    PSD, so ``eigh`` suffices; tiny negative eigenvalues from rounding are clipped to 0)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"need means (d,) and covariances (d, d) of one d; got {mu1.shape}, {s1.shape}, {mu2.shape}, "
                         f"{s2.shape}")
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


# --------------------------------------------------------------------------- adversarial training in embedding space

def _check_module(embedding) -> None:
    if not isinstance(embedding, nn.Module):
        raise TypeError(f"embedding must be the model's embedding module (e.g. model.bert.embeddings.word), not a "
                        f"name or {type(embedding).__name__}")


@contextlib.contextmanager
def add_to_output(embedding: nn.Module, delta: Tensor) -> Iterator[None]:
    """Inside the block, ``embedding``'s output is ``output + delta``; on exit the hook is removed (the model is
    exactly as before). Raises ValueError if the block never called ``embedding`` (the wrong module was given)."""
    _check_module(embedding)
    calls = []

    def hook(module, inputs, output):
        if output.shape != delta.shape:
            raise ValueError(f"delta has shape {tuple(delta.shape)} but {type(module).__name__} produced "
                             f"{tuple(output.shape)}; compute delta for this batch")
        calls.append(1)
        return output + delta

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
    if not calls:
        raise ValueError("the embedding module was never called inside add_to_output: it is not the module the model "
                         "uses, so nothing was perturbed; pass the model's own embedding module")


def _seq_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (t.dim() - 1))


def embedding_attack(loss_fn: Callable[[], Tensor], embedding: nn.Module, epsilon: float, steps: int = 1,
                     step_size: float | None = None) -> Tensor:
    """A perturbation of ``embedding``'s output, L2 norm ≤ ``epsilon`` per sequence, that raises ``loss_fn()``.

    ``steps=1`` is FGM (Miyato et al.: ε · g / ‖g‖); ``steps > 1`` is PGD (steps of ``step_size``, default
    2.5·ε/steps, each projected back onto the ε-ball). ``loss_fn()`` runs the model on one batch and returns a
    scalar loss; model parameters' ``.grad`` are not touched. Apply the result with ``add_to_output``."""
    _check_module(embedding)
    epsilon = _positive("epsilon", epsilon, allow_zero=True)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int ≥ 1 (1 = FGM, more = PGD), got {steps!r}")
    step_size = 2.5 * epsilon / steps if step_size is None else _positive("step_size", step_size)
    delta = None

    def hook(module, inputs, output):
        nonlocal delta
        if delta is None:
            delta = torch.zeros_like(output, requires_grad=True)
        return output + delta

    for _ in range(steps):
        handle = embedding.register_forward_hook(hook)
        try:
            loss = loss_fn()
        finally:
            handle.remove()
        if delta is None:
            raise ValueError("loss_fn() never called the embedding module: it is not the module the model uses; pass "
                             "the model's own embedding module (e.g. model.bert.embeddings.word)")
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            step = (epsilon if steps == 1 else step_size) * grad / _seq_norm(grad)
            new = delta + step
            new = new * torch.clamp(epsilon / _seq_norm(new), max=1.0)  # project onto the per-sequence ε-ball
        delta = new.requires_grad_(True)
    return delta.detach()
