"""Optimizers, learning-rate schedules and gradient accumulation of chapter 09 (reused by chapters 07 and 11).

``AdamW`` and ``LAMB`` are ``torch.optim.Optimizer`` subclasses. Every schedule is a *multiplier* function
``f(step) -> float`` of the optimizer's base learning rate, for ``torch.optim.lr_scheduler.LambdaLR``
(``make_scheduler`` builds one by name). ``accumulate_gradients`` sums micro-batch gradients so that they equal
the gradient of the whole batch's mean loss, with the mean taken over tokens (padding-aware), not over micro-batches.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "AdamW", "LAMB", "decay_groups", "linear_schedule", "cosine_schedule", "constant_schedule", "step_schedule",
    "exponential_schedule", "polynomial_schedule", "inverse_sqrt_schedule", "cosine_restarts_schedule",
    "triangular_schedule", "one_cycle_schedule", "SCHEDULES", "make_scheduler", "split_batch",
    "accumulate_gradients",
]


# --------------------------------------------------------------------------- optimizers

def _is_number(v: Any) -> bool:
    """A real int or float (``True``/``False`` are ints to Python, but not hyper-parameters)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_hparams(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if not _is_number(lr) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"learning rate must be a finite number >= 0, got lr={lr!r}")
    if len(betas) != 2 or not all(_is_number(b) and 0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), e.g. (0.9, 0.999); got betas={betas!r}")
    if not _is_number(eps) or eps < 0:
        raise ValueError(f"eps must be >= 0 (it keeps the division finite, e.g. 1e-8); got eps={eps!r}")
    if not _is_number(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0 (0 turns it off); got weight_decay={weight_decay!r}")


def _adam_moments(state: dict, p: Tensor, g: Tensor, beta1: float, beta2: float) -> tuple[Tensor, Tensor, int]:
    """Update Adam's first and second moments in ``state``; return them and the step count."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["step"] += 1
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.lerp_(g, 1 - beta1)                        # m = b1 m + (1 - b1) g
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v = b2 v + (1 - b2) g^2
    return m, v, state["step"]


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        _check_hparams(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m, v, t = _adam_moments(self.state[p], p, p.grad, b1, b2)
                p.mul_(1 - lr * wd)                                  # decoupled decay: not seen by m or v
                denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))      # bias-corrected Adam step
        return loss


class LAMB(torch.optim.Optimizer):
    """LAMB (You et al., 2020): the AdamW update u of each tensor rescaled by its trust ratio ||p|| / ||u||.

    p <- p - lr * r * u with u = m_hat / (sqrt(v_hat) + eps) + wd p and r = ||p|| / ||u|| (1 when either is 0),
    clamped to ``trust_clip`` = (low, high) if given; ``trust_clip=(1, 1)`` is exactly AdamW. The last ratio of
    every tensor is kept in ``state[p]["trust_ratio"]``; ``trust_ratios(model)`` returns them by parameter name.
    A param group with ``adapt=False`` (e.g. biases and norms) skips the ratio.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 1e-2, trust_clip: tuple[float, float] | None = None, adapt: bool = True):
        _check_hparams(lr, betas, eps, weight_decay)
        if trust_clip is not None and (len(trust_clip) != 2 or not 0 <= trust_clip[0] <= trust_clip[1]):
            raise ValueError(f"trust_clip must be None or (low, high) with 0 <= low <= high, got {trust_clip!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      trust_clip=trust_clip, adapt=adapt))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                m, v, t = _adam_moments(state, p, p.grad, b1, b2)
                u = (m / (1 - b1 ** t)) / ((v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps))
                u.add_(p, alpha=wd)
                ratio = torch.ones((), device=p.device)
                if group["adapt"]:
                    w_norm, u_norm = p.norm(), u.norm()
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, ratio)
                    if group["trust_clip"] is not None:
                        ratio = ratio.clamp(*group["trust_clip"])
                state["trust_ratio"] = ratio
                p.sub_(u * (lr * ratio))
        return loss

    def trust_ratios(self, model: nn.Module) -> dict[str, float]:
        """The last trust ratio of every parameter of ``model`` this optimizer has stepped, by name."""
        return {name: float(self.state[p]["trust_ratio"]) for name, p in model.named_parameters()
                if p in self.state and "trust_ratio" in self.state[p]}


def decay_groups(model: nn.Module, weight_decay: float, no_decay: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Two param groups: matrices (ndim >= 2) with ``weight_decay``; biases and norm gains (ndim < 2), and every
    parameter whose name contains one of the ``no_decay`` strings (e.g. ViT's ``("cls_token", "pos.")``), without."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if isinstance(no_decay, str) or not all(isinstance(k, str) and k for k in no_decay):
        raise TypeError(f"no_decay must be a list or tuple of non-empty name fragments like ('cls_token', 'pos.'), "
                        f"got {no_decay!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    unused = [k for k in no_decay if not any(k in n for n, _ in named)]
    if unused:
        raise ValueError(f"no_decay entries {unused} match no parameter name; names look like "
                         f"{[n for n, _ in named[:4]]}")
    exempt = [p.ndim < 2 or any(k in n for k in no_decay) for n, p in named]
    return [{"params": [p for (_, p), e in zip(named, exempt) if not e], "weight_decay": weight_decay},
            {"params": [p for (_, p), e in zip(named, exempt) if e], "weight_decay": 0.0}]


# --------------------------------------------------------------------------- schedules (multipliers of the base lr)

def _check_steps(total_steps: int, warmup_steps: int = 0) -> None:
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup ({warmup_steps} steps) is longer than training ({total_steps} steps); "
                         f"use warmup_steps <= total_steps (typically 1-10 % of it)")


def _check_positive(**kw: float) -> None:
    for k, v in kw.items():
        if not _is_number(v) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{k} must be a finite number > 0, got {v!r}")


def _warmup(step: int, warmup_steps: int) -> float:
    return step / max(1, warmup_steps)


def constant_schedule(warmup_steps: int = 0) -> Callable[[int], float]:
    """1, after an optional linear warmup from 0."""
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    return lambda step: _warmup(step, warmup_steps) if step < warmup_steps else 1.0


def linear_schedule(total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """Linear warmup 0 -> 1 over ``warmup_steps``, then linear decay 1 -> 0 at ``total_steps``."""
    _check_steps(total_steps, warmup_steps)

    def f(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return f


def cosine_schedule(total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> Callable[[int], float]:
    """Linear warmup, then half a cosine from 1 down to ``min_factor`` at ``total_steps``."""
    _check_steps(total_steps, warmup_steps)
    if not 0 <= min_factor <= 1:
        raise ValueError(f"min_factor must be in [0, 1], got {min_factor!r}")

    def f(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def step_schedule(step_size: int, gamma: float = 0.1) -> Callable[[int], float]:
    """gamma ** (step // step_size): drop by ``gamma`` every ``step_size`` steps (``StepLR``)."""
    _check_positive(step_size=step_size, gamma=gamma)
    return lambda step: gamma ** (step // step_size)


def exponential_schedule(gamma: float) -> Callable[[int], float]:
    """gamma ** step (``ExponentialLR``)."""
    _check_positive(gamma=gamma)
    return lambda step: gamma ** step


def polynomial_schedule(total_steps: int, power: float = 1.0, warmup_steps: int = 0) -> Callable[[int], float]:
    """(1 - progress) ** power after a linear warmup (``PolynomialLR``; power 1 is linear decay)."""
    _check_steps(total_steps, warmup_steps)
    _check_positive(power=power)

    def f(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        return (1 - min(step - warmup_steps, total_steps - warmup_steps) / max(1, total_steps - warmup_steps)) ** power
    return f


def inverse_sqrt_schedule(warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup, then sqrt(warmup / step): the original Transformer's ("Noam") schedule, scaled to peak 1."""
    if not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"warmup_steps must be an int >= 1 for an inverse-sqrt schedule, got {warmup_steps!r}")
    return lambda step: _warmup(step, warmup_steps) if step < warmup_steps else math.sqrt(warmup_steps / step)


def cosine_restarts_schedule(cycle_steps: int, cycle_mult: int = 1, min_factor: float = 0.0) -> Callable[[int], float]:
    """SGDR: cosine 1 -> ``min_factor`` over ``cycle_steps``, then restart; each cycle ``cycle_mult`` x longer."""
    if not isinstance(cycle_steps, int) or cycle_steps < 1 or not isinstance(cycle_mult, int) or cycle_mult < 1:
        raise ValueError(f"cycle_steps and cycle_mult must be ints >= 1, got {cycle_steps!r}, {cycle_mult!r}")
    if not _is_number(min_factor) or not 0 <= min_factor <= 1:
        raise ValueError(f"min_factor (lowest lr / peak lr) must be in [0, 1], got {min_factor!r}")

    def f(step: int) -> float:
        t, length = step, cycle_steps
        while t >= length:  # find the position inside the current cycle
            t, length = t - length, length * cycle_mult
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t / length))
    return f


def triangular_schedule(step_size_up: int, base_factor: float = 0.1,
                        step_size_down: int | None = None) -> Callable[[int], float]:
    """Triangular cyclical LR (Smith, 2017): base_factor -> 1 in ``step_size_up`` steps, back down, repeat."""
    down = step_size_up if step_size_down is None else step_size_down
    _check_positive(step_size_up=step_size_up, step_size_down=down)
    if not 0 <= base_factor <= 1:
        raise ValueError(f"base_factor (lowest lr / peak lr) must be in [0, 1], got {base_factor!r}")
    cycle = step_size_up + down

    def f(step: int) -> float:
        x = step % cycle
        rise = x / step_size_up if x < step_size_up else 1 - (x - step_size_up) / down
        return base_factor + (1 - base_factor) * rise
    return f


def one_cycle_schedule(total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                       final_div_factor: float = 1e4) -> Callable[[int], float]:
    """One-cycle (Smith & Topin): cosine from 1/div_factor up to 1 over ``pct_start``, then down to
    1/(div_factor * final_div_factor) at the last step (``OneCycleLR`` with anneal_strategy='cos').

    As in ``OneCycleLR``, the peak is at step ``pct_start * total_steps - 1``: with ``pct_start * total_steps < 1``
    there is no warm-up step (it starts near the peak), and steps after ``total_steps`` raise ValueError.
    """
    _check_steps(total_steps)
    _check_positive(div_factor=div_factor, final_div_factor=final_div_factor)
    if not _is_number(pct_start) or not 0 < pct_start < 1:
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
    start, low = 1 / div_factor, 1 / (div_factor * final_div_factor)
    peak_step, last = pct_start * total_steps - 1, total_steps - 1
    if peak_step == 0:  # OneCycleLR divides by zero here
        raise ValueError(f"pct_start * total_steps = {pct_start} * {total_steps} = 1 puts the peak on step 0 and leaves "
                         f"a warm-up of zero steps; pass pct_start > 1 / total_steps for a warm-up, or a smaller one")

    def anneal(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)

    def f(step: int) -> float:
        if step > total_steps:
            raise ValueError(f"one_cycle_schedule(total_steps={total_steps}) was asked for step {step}; the cycle is "
                             f"over, make total_steps at least the number of scheduler steps")
        if step <= peak_step:
            return anneal(start, 1.0, step / peak_step)
        return anneal(1.0, low, (step - peak_step) / (last - peak_step))
    return f


SCHEDULES: dict[str, Callable[..., Callable[[int], float]]] = {
    "constant": constant_schedule, "linear": linear_schedule, "cosine": cosine_schedule, "step": step_schedule,
    "exponential": exponential_schedule, "polynomial": polynomial_schedule, "inverse_sqrt": inverse_sqrt_schedule,
    "cosine_restarts": cosine_restarts_schedule, "triangular": triangular_schedule, "one_cycle": one_cycle_schedule,
}


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR(optimizer, SCHEDULES[name](**kwargs))``, e.g. make_scheduler(opt, "cosine", total_steps=1000, warmup_steps=50)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES[name](**kwargs))


# --------------------------------------------------------------------------- gradient accumulation

def split_batch(batch: Any, micro_batch_size: int) -> list:
    """Split a tensor, or a tuple/list/dict of tensors sharing dim 0, into micro-batches of ``micro_batch_size`` rows."""
    if not isinstance(micro_batch_size, int) or micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be an int >= 1, got {micro_batch_size!r}")
    if isinstance(batch, Tensor):
        return list(batch.split(micro_batch_size))
    leaves = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    if len({len(v) for v in leaves if isinstance(v, Tensor)}) > 1:
        raise ValueError(f"every tensor of the batch must have the same size in dim 0, got "
                         f"{[len(v) for v in leaves if isinstance(v, Tensor)]}")
    if isinstance(batch, dict):
        parts = {k: split_batch(v, micro_batch_size) for k, v in batch.items()}
        n = {len(v) for v in parts.values()}
        if len(n) != 1:
            raise ValueError("every tensor of the batch must have the same size in dim 0")
        return [{k: v[i] for k, v in parts.items()} for i in range(n.pop())]
    if isinstance(batch, (tuple, list)):
        parts = [split_batch(v, micro_batch_size) for v in batch]
        if len({len(v) for v in parts}) != 1:
            raise ValueError("every tensor of the batch must have the same size in dim 0")
        return [type(batch)(v[i] for v in parts) for i in range(len(parts[0]))]
    raise TypeError(f"split_batch takes a tensor or a tuple/list/dict of tensors, got {type(batch).__name__}")


def accumulate_gradients(model: nn.Module, micro_batches: Iterable, loss_sum_fn: Callable[[nn.Module, Any], Tensor],
                         count_fn: Callable[[Any], int | Tensor]) -> float:
    """Backward through every micro-batch so that ``.grad`` equals the gradient of the whole batch's mean loss.

    ``loss_sum_fn(model, mb)`` returns the *sum* of the per-item losses of micro-batch ``mb`` (items = tokens or
    examples), ``count_fn(mb)`` how many items it has (e.g. non-padding tokens). Each sum is divided by the total
    count over all micro-batches, so a micro-batch with more tokens weighs more. Gradients add to ``.grad``:
    zero them before. Returns the whole batch's mean loss.
    """
    micro_batches = list(micro_batches)
    if not micro_batches:
        raise ValueError("accumulate_gradients needs at least one micro-batch")
    total = sum(int(count_fn(mb)) for mb in micro_batches)
    if total <= 0:
        raise ValueError(f"the micro-batches hold {total} items to average over (all padding?); count_fn must count "
                         f"the real tokens/examples, e.g. (labels != -100).sum()")
    mean = 0.0
    for mb in micro_batches:
        loss = loss_sum_fn(model, mb) / total
        if loss.dim() != 0:
            raise ValueError(f"loss_sum_fn must return a scalar (use reduction='sum'), got shape {tuple(loss.shape)}")
        loss.backward()
        mean += loss.item()
    return mean
