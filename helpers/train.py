"""A small training loop with a progress bar and a loss history, plus atomic checkpoints."""
from __future__ import annotations

import itertools
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["fit", "save_checkpoint", "load_checkpoint", "count_parameters"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def fit(model: nn.Module, batches: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer, *,
        steps: int | None = None, epochs: int | None = None, scheduler=None, grad_clip: float | None = None,
        eval_fn: Callable[[], dict] | None = None, eval_every: int | None = None, time_limit: float | None = None,
        desc: str = "train", progress: bool = True) -> dict[str, list]:
    """Train ``model`` and return its history.

    ``batches`` is an iterable of batches (a DataLoader, or a generator for step-based training);
    ``loss_fn(model, batch)`` returns a scalar loss. Give ``steps`` or ``epochs`` (epochs re-iterates
    ``batches``). ``eval_fn()`` returns a dict of metrics, run every ``eval_every`` steps and at the end.
    ``time_limit`` (seconds) stops early, after the current step. History keys: ``step``, ``loss``, ``lr``,
    and ``eval_step`` plus one list per eval metric.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("pass exactly one of steps=N or epochs=N")
    if (steps is not None and steps < 1) or (epochs is not None and epochs < 1):
        raise ValueError(f"steps/epochs must be ≥ 1, got steps={steps}, epochs={epochs}")
    if eval_every is not None and eval_fn is None:
        raise ValueError("eval_every needs an eval_fn")
    if epochs is not None:
        total = epochs * len(batches) if hasattr(batches, "__len__") else None
        stream = itertools.chain.from_iterable(batches for _ in range(epochs))
    else:
        total, stream = steps, itertools.islice(itertools.cycle(batches) if hasattr(batches, "__len__") else batches, steps)
    hist: dict[str, list] = {"step": [], "loss": [], "lr": [], "eval_step": []}
    import time
    t0 = time.perf_counter()
    bar = tqdm(stream, total=total, desc=desc, disable=not progress, mininterval=1.0)

    def evaluate(step):
        model.eval()
        with torch.no_grad():
            metrics = eval_fn()
        model.train()
        hist["eval_step"].append(step)
        for k, v in metrics.items():
            hist.setdefault(k, []).append(float(v))
        bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items()})

    model.train()
    step = 0
    for step, batch in enumerate(bar, 1):
        loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower the learning rate or clip gradients")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        hist["step"].append(step)
        hist["loss"].append(loss.item())
        hist["lr"].append(optimizer.param_groups[0]["lr"])
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if eval_every and step % eval_every == 0:
            evaluate(step)
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
    bar.close()
    if eval_fn is not None and (not hist["eval_step"] or hist["eval_step"][-1] != step):
        evaluate(step)
    hist["seconds"] = [time.perf_counter() - t0]
    return hist


def save_checkpoint(path: str | Path, **state) -> Path:
    """Save ``state`` (state_dicts, numbers, tensors) with ``torch.save``, atomically: write a temp file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint written by ``save_checkpoint`` with ``weights_only=True`` (no arbitrary code runs)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def perplexity(loss: float) -> float:
    """exp(mean cross-entropy in nats)."""
    return math.exp(loss)
