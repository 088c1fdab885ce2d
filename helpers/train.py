"""A small training loop with a progress bar and a loss history, plus atomic checkpoints."""
from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
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


def _positive_int(name: str, v, minimum: int = 1) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {name}={v!r}")


def _chunks(it: Iterator, n: int) -> Iterator[list]:
    """Consecutive lists of ``n`` items of ``it`` (the last one may be shorter)."""
    while group := list(itertools.islice(it, n)):
        yield group


def _passes(batches: Iterable, first: Iterator) -> Iterator:
    """Endless stream of batches: ``first``, then a fresh ``iter(batches)`` per pass (so a DataLoader reshuffles)."""
    it = first
    while True:
        empty = True
        for batch in it:
            empty = False
            yield batch
        if empty:
            raise ValueError("batches yielded no batch in one pass; pass a non-empty DataLoader, list or generator")
        it = iter(batches)


def _step_groups(batches: Iterable, first: Iterator, steps: int | None, epochs: int | None, accum: int) -> Iterator[list]:
    """The micro-batches of each optimizer step: ``steps`` groups of ``accum``, or ``epochs`` passes cut in groups."""
    if epochs is not None:
        for epoch in range(epochs):
            empty = True
            for group in _chunks(first if epoch == 0 else iter(batches), accum):
                empty = False
                yield group
            if empty:
                raise ValueError(f"batches yielded no batch in epoch {epoch + 1}; pass a non-empty DataLoader or list")
        return
    one_shot = first is batches
    seen = 0
    for group in _chunks(itertools.islice(first if one_shot else _passes(batches, first), steps * accum), accum):
        seen += len(group)
        if len(group) == accum:
            yield group
    if seen == 0:
        raise ValueError("batches yielded no batch; pass a non-empty DataLoader, list or generator")
    if seen < steps * accum:
        raise ValueError(f"the generator ran out after {seen} batches = {seen // accum} optimizer steps of the {steps} "
                         f"asked for; pass steps={seen // accum} or fewer, or a re-iterable such as a DataLoader or a "
                         f"list (fit re-iterates it)")


def fit(model: nn.Module, batches: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer, *,
        steps: int | None = None, epochs: int | None = None, scheduler=None, grad_clip: float | None = None,
        eval_fn: Callable[[], dict] | None = None, eval_every: int | None = None, autocast: bool = False,
        accum_steps: int = 1, desc: str = "train", progress: bool = True) -> dict[str, list]:
    """Train ``model`` and return its history.

    ``batches``: a re-iterable (DataLoader, list, any object whose ``iter()`` starts a new pass) or a one-shot
    generator; ``loss_fn(model, batch)`` returns a scalar loss. Give ``steps`` (optimizer steps; a re-iterable is
    re-iterated afresh whenever a pass ends, so a DataLoader reshuffles; a generator must last that long) or
    ``epochs`` (passes; re-iterables only). ``autocast=True`` runs ``loss_fn`` under bf16 ``helpers.env.autocast``.
    ``accum_steps=k`` accumulates the gradients of k batches per optimizer step, each loss divided by k (equally
    weighted micro-batches; for token-weighted accumulation of padded text see ``helpers.optim.accumulate_gradients``);
    with ``epochs`` the last, shorter group of a pass is divided by its own size. ``grad_clip`` clips the gradient
    norm; ``scheduler.step()`` runs after every optimizer step. ``eval_fn()`` returns a dict of metrics, run every
    ``eval_every`` steps and at the end. History: ``step``, ``loss`` (mean over the step's micro-batches), ``lr``
    (the rate that step used), ``eval_step`` plus one list per eval metric, and ``seconds`` (one number).
    """
    if (steps is None) == (epochs is None):
        raise ValueError("pass exactly one of steps=N or epochs=N")
    _positive_int("steps", steps)
    _positive_int("epochs", epochs)
    _positive_int("eval_every", eval_every)
    _positive_int("accum_steps", accum_steps)
    if eval_every is not None and eval_fn is None:
        raise ValueError("eval_every needs an eval_fn")
    if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float))
                                  or not 0 < grad_clip < math.inf):
        raise ValueError(f"grad_clip must be a finite number > 0 (the largest gradient norm, e.g. 1.0), got {grad_clip!r}")
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    if autocast:
        from .env import autocast as _autocast
        device = next(model.parameters()).device
        amp = lambda: _autocast(device, enabled=True)
    first = iter(batches)
    if epochs is not None and first is batches:
        raise ValueError(f"epochs={epochs} needs a re-iterable such as a DataLoader or a list; "
                         f"for a generator pass steps=N")
    total = steps
    if epochs is not None:
        try:  # the progress bar's length; an iterable-style DataLoader has no len()
            total = epochs * math.ceil(len(batches) / accum_steps)
        except TypeError:
            total = None
    hist: dict[str, list] = {"step": [], "loss": [], "lr": [], "eval_step": []}
    t0 = time.perf_counter()
    bar = tqdm(_step_groups(batches, first, steps, epochs, accum_steps), total=total, desc=desc,
               disable=not progress, mininterval=1.0)

    def evaluate(step: int) -> None:
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
    with bar:
        for step, group in enumerate(bar, 1):
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for batch in group:
                with amp():
                    loss = loss_fn(model, batch)
                if loss.dim() != 0:
                    raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}; take .mean()")
                (loss / len(group)).backward()
                loss_sum = loss_sum + loss.detach().float()
            loss_value = float(loss_sum) / len(group)  # one device sync per step
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step}: lower the learning rate or clip "
                                         f"gradients")
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            hist["lr"].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            hist["step"].append(step)
            hist["loss"].append(loss_value)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if eval_every and step % eval_every == 0:
                evaluate(step)
        if eval_fn is not None and (not hist["eval_step"] or hist["eval_step"][-1] != step):
            evaluate(step)
    hist["seconds"] = [time.perf_counter() - t0]
    return hist


def _weights_only_bytes(obj) -> bytes | None:
    """``torch.save(obj)`` as bytes if ``torch.load(weights_only=True)`` can read them back, else None."""
    buf = io.BytesIO()
    try:
        torch.save(obj, buf)
        buf.seek(0)
        torch.load(buf, weights_only=True, map_location="meta")  # meta: check the types, copy no tensor data
    except Exception:  # pickling errors and weights_only's UnpicklingError alike
        return None
    return buf.getvalue()


def save_checkpoint(path: str | Path, **state) -> Path:
    """Save ``state`` with ``torch.save``, atomically (temp file in the same folder, fsync, rename); return the path.

    Only what ``load_checkpoint`` (``weights_only=True``) reads back is accepted: tensors, ``None``, bool, int,
    float, complex, str, bytes, ``torch.Size``/dtype/device, and lists, tuples, sets and dicts of these - so
    state_dicts, ``torch.get_rng_state()``, ``random.getstate()`` and ``dataclasses.asdict(config)`` work. Anything
    else (a dataclass, a NumPy array, scalar or RNG state, a module) raises TypeError and writes nothing.
    """
    if not state:
        raise ValueError("save_checkpoint needs something to save, e.g. save_checkpoint(path, model=model.state_dict())")
    data = _weights_only_bytes(state)
    if data is None:
        bad = {k: type(v).__name__ for k, v in state.items() if _weights_only_bytes(v) is None}
        names = ", ".join(f"{k} (a {t})" for k, t in bad.items()) or "this state"
        raise TypeError(f"load_checkpoint (torch.load with weights_only=True) could not read back {names}; "
                        f"store plain data instead: "
                        f"a dataclass as dataclasses.asdict(x), a NumPy array, scalar or RNG state as a tensor, list "
                        f"or float (torch.from_numpy(a), a.tolist(), float(x)), a model or optimizer as its "
                        f".state_dict()")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
