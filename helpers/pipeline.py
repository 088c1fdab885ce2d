"""Chapter 11's training pipeline: a validated run configuration, memory-mapped token files, a data loader that
can resume mid-epoch, checkpoints with keep-last-k and corruption fallback, TensorBoard read-back, and a way to
SIGKILL a training process from a notebook. ``scripts/train.py`` is built from these parts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .gpt import GPT
from .layers import TransformerBlock
from .train import load_checkpoint, save_checkpoint

TASKS = ("lm", "cls")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESUME_LEVELS = ("model", "rng", "full")


@dataclass
class RunConfig:
    """Everything that decides a training run. Saved in every checkpoint; a resume with a different value of any
    field outside ``BOOKKEEPING`` is refused (it would silently train a different model)."""
    task: str = "lm"                # "lm": next-token prediction on a flat token file; "cls": sequence classification
    train_data: str = ""            # token file prefix (<prefix>.bin + <prefix>.json), see write_token_file
    val_data: str = ""              # the same for validation
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block: int = 64                 # context length (lm) or maximum sequence length (cls, taken from the file)
    dropout: float = 0.1
    num_classes: int = 2            # cls only
    batch: int = 32                 # global batch in sequences; a multiple of the number of processes
    lr: float = 3e-3                # peak learning rate: AdamW, linear warm-up then cosine decay to 0
    warmup: int = 10
    steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    precision: str = "auto"         # auto: bf16 where native, fp16 + GradScaler on older GPUs, else fp32
    seed: int = 0
    save_every: int = 50            # checkpoint every N steps (and at the end)
    keep_last: int = 3              # keep the newest k checkpoints
    log_every: int = 10             # TensorBoard scalars and a printed line every N steps
    eval_every: int = 50            # validation every N steps (and at the end)
    eval_batches: int = 4           # lm: validation batches of `batch` windows
    sample_every: int = 0           # lm: a generated sample in TensorBoard every N steps (0: never)

    BOOKKEEPING = ("save_every", "keep_last", "log_every", "eval_every", "eval_batches", "sample_every")

    def __post_init__(self):
        self.validate()

    def validate(self, world_size: int = 1) -> RunConfig:
        """Raise ValueError naming the field, the bad value and what to use instead; return self."""
        ints = ("n_layer", "n_head", "n_embd", "block", "num_classes", "batch", "steps", "keep_last",
                "log_every", "eval_every", "eval_batches")
        for k in ints:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"RunConfig.{k} must be a positive int, got {v!r}")
        for k in ("warmup", "save_every", "sample_every", "seed"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"RunConfig.{k} must be an int >= 0, got {v!r}")
        for k in ("lr", "weight_decay", "grad_clip", "dropout"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"RunConfig.{k} must be a finite number, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"RunConfig.lr must be > 0 (a peak learning rate such as 3e-3), got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError(f"need weight_decay >= 0 and grad_clip > 0, got {self.weight_decay}, {self.grad_clip}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"RunConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.task not in TASKS:
            raise ValueError(f"RunConfig.task must be one of {TASKS}, got {self.task!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"RunConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.warmup >= self.steps:
            raise ValueError(f"warmup ({self.warmup}) must be shorter than steps ({self.steps})")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
        if self.batch % world_size:
            raise ValueError(f"the global batch {self.batch} is not divisible by the {world_size} processes; use a "
                             f"batch that is a multiple of {world_size} (e.g. {self.batch // world_size * world_size or world_size})")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        if not isinstance(d, dict):
            raise TypeError(f"a run configuration is a dict of field: value, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; the fields are {sorted(known)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no config file at {path}; write one with RunConfig(...).save(path)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d)


def config_diff(saved: dict, current: RunConfig) -> dict:
    """{field: (saved, current)} for every field that changes training (``BOOKKEEPING`` fields may change)."""
    now = current.to_dict()
    return {k: (saved.get(k), now[k]) for k in now
            if k not in RunConfig.BOOKKEEPING and saved.get(k) != now[k]}


# ----------------------------------------------------------------------------------------------- models

class Classifier(nn.Module):
    """Token + learned position embeddings, ``n_layer`` bidirectional pre-norm Transformer blocks, a final
    LayerNorm, mean pooling over the real (non-padding) tokens and a linear head."""

    def __init__(self, vocab_size: int, max_len: int, n_layer: int, n_head: int, n_embd: int, dropout: float,
                 num_classes: int, pad_id: int):
        super().__init__()
        self.pad_id = pad_id
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(max_len, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(n_embd, n_head, 4 * n_embd, dropout, norm_first=True,
                                                     activation="gelu_tanh") for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        keep = idx != self.pad_id                                   # (B, T)
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))
        mask = keep[:, None, None, :]                               # every query sees the real tokens
        for block in self.blocks:
            x = block(x, mask=mask)
        x = self.ln_f(x)
        w = keep.unsqueeze(-1).to(x.dtype)
        return self.head((x * w).sum(1) / w.sum(1).clamp(min=1))


def build_model(cfg: RunConfig, meta: dict) -> nn.Module:
    """The model a run trains: a GPT (task lm) or a Classifier (task cls), sized by ``cfg`` and the token file's
    metadata (vocab_size; for cls the sequence length and pad_id)."""
    if cfg.task == "lm":
        return GPT(vocab_size=meta["vocab_size"], block_size=cfg.block, n_layer=cfg.n_layer, n_head=cfg.n_head,
                   n_embd=cfg.n_embd, dropout=cfg.dropout)
    return Classifier(meta["vocab_size"], meta["shape"][1], cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout,
                      cfg.num_classes, meta["pad_id"])


# ----------------------------------------------------------------------------------------------- token files

def write_token_file(prefix: str | Path, tokens, **meta) -> Path:
    """Write ``tokens`` (a 1-D or 2-D array of ids < 65,536) to ``<prefix>.bin`` as raw uint16 (nanoGPT's format;
    read it back without loading it with ``open_token_file``) and shape/dtype/``meta`` to ``<prefix>.json``.
    Both are written atomically."""
    a = np.asarray(tokens)
    if a.ndim not in (1, 2) or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"tokens must be a non-empty 1-D or 2-D integer array, got {a.dtype} {a.shape}")
    if a.min() < 0 or a.max() >= 2 ** 16:
        raise ValueError(f"uint16 holds ids in [0, 65535]; got [{a.min()}, {a.max()}] (use a smaller vocabulary)")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for suffix, data in ((".bin", a.astype(np.uint16).tobytes()),
                         (".json", json.dumps({"dtype": "uint16", "shape": list(a.shape), **meta}).encode())):
        tmp = prefix.with_name(prefix.name + suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, prefix.with_name(prefix.name + suffix))
    return prefix.with_name(prefix.name + ".bin")


def open_token_file(prefix: str | Path) -> tuple[np.memmap, dict]:
    """(read-only memory map of the tokens, metadata) of a file written by ``write_token_file``."""
    prefix = Path(prefix)
    meta_path, bin_path = prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".bin")
    if not meta_path.exists() or not bin_path.exists():
        raise FileNotFoundError(f"no token file {bin_path} (+ .json); write one with write_token_file")
    meta = json.loads(meta_path.read_text())
    shape = tuple(meta["shape"])
    if bin_path.stat().st_size != 2 * int(np.prod(shape)):
        raise ValueError(f"{bin_path} has {bin_path.stat().st_size} bytes, its metadata says shape {shape} "
                         f"(= {2 * int(np.prod(shape))} bytes): the file is truncated or from another run")
    return np.memmap(bin_path, dtype=np.uint16, mode="r", shape=shape), meta


def head_tail(ids, max_len: int, head: int | None = None) -> list:
    """Keep the first ``head`` and the last ``max_len - head`` ids of a sequence longer than ``max_len``
    (Sun et al. 2019: the start and the end of a review say the most); shorter ones are returned unchanged."""
    if not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
    head = max_len // 2 if head is None else head
    if not 0 <= head <= max_len:
        raise ValueError(f"head must be in [0, max_len={max_len}], got {head}")
    ids = list(ids)
    if len(ids) <= max_len:
        return ids
    return ids[:head] + (ids[len(ids) - (max_len - head):] if max_len > head else [])


# ----------------------------------------------------------------------------------------------- resumable loader

class ResumableLoader:
    """Global batches of example indices, epoch after epoch, from ``DataLoader(range(n), shuffle=True,
    generator=g)``, with the state needed to continue mid-epoch: the generator's state *before* this epoch's
    ``iter()`` (the shuffle is drawn from it), the epoch and the number of batches already taken."""

    def __init__(self, n: int, batch: int, seed: int):
        if n < batch:
            raise ValueError(f"{n} examples cannot fill one batch of {batch}; use a smaller batch or more data")
        self.g = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(range(n), batch_size=batch, shuffle=True, generator=self.g, drop_last=True)
        self.epoch, self.position, self._it = 0, 0, None
        self._epoch_state = self.g.get_state()

    def __len__(self) -> int:
        return len(self.loader)

    def next(self) -> torch.Tensor:
        if self._it is None:
            self._epoch_state = self.g.get_state()
            self._it = iter(self.loader)
            for _ in range(self.position):  # after a resume: skip what this epoch already consumed
                next(self._it)
        batch = next(self._it)
        self.position += 1
        if self.position == len(self.loader):
            for _ in self._it:  # run the epoch's iterator to its end, as a `for` loop does: the sampler draws from
                pass            # the generator once more on its way out, and the next epoch's order depends on it
            self.epoch, self.position, self._it = self.epoch + 1, 0, None
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position,
                "generator": self._epoch_state if self._it is not None else self.g.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["generator"])
        self.epoch, self.position, self._it = state["epoch"], state["position"], None


# ----------------------------------------------------------------------------------------------- checkpoints

_CKPT = re.compile(r"^ckpt_(\d{6,})\.pt$")
REQUIRED = ("model", "optimizer", "scheduler", "step", "config")


class Checkpoints:
    """``folder/ckpt_000050.pt`` … written atomically (temp file + ``os.replace``), the newest ``keep_last`` kept;
    ``latest`` skips (and reports) a file that cannot be read, so a checkpoint cut short falls back to the one
    before it."""

    def __init__(self, folder: str | Path, keep_last: int = 3, log=print):
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
        self.folder, self.keep_last, self.log = Path(folder), keep_last, log

    def paths(self) -> list[Path]:
        """Checkpoint files, newest (highest step) first."""
        if not self.folder.exists():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _CKPT.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, step: int, **state) -> Path:
        path = save_checkpoint(self.folder / f"ckpt_{step:06d}.pt", step=step, **state)
        for old in self.paths()[self.keep_last:]:
            old.unlink(missing_ok=True)
        return path

    def latest(self, config: RunConfig | None = None, map_location="cpu") -> dict:
        """The newest readable checkpoint. FileNotFoundError when there is none (never a silent fresh start);
        ValueError when it was written with a different configuration."""
        for tmp in self.folder.glob("*.tmp") if self.folder.exists() else ():
            self.log(f"removing {tmp.name}: a save that was interrupted")
            tmp.unlink(missing_ok=True)
        paths = self.paths()
        for path in paths:
            try:
                ck = load_checkpoint(path, map_location=map_location)
                missing = [k for k in REQUIRED if k not in ck]
                if missing:
                    raise ValueError(f"missing {missing}")
            except Exception as e:  # truncated zip, bad pickle, missing keys
                self.log(f"skipping {path.name}: unreadable ({type(e).__name__}: {str(e)[:80]})")
                continue
            if config is not None:
                diff = config_diff(ck["config"], config)
                if diff:
                    lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
                    raise ValueError(f"{path} was written by a run with a different configuration ({lines}); "
                                     f"resume with the original configuration, or start a new run in another "
                                     f"folder")
            ck["path"] = str(path)
            return ck
        what = f"{len(paths)} unreadable checkpoint(s)" if paths else "no checkpoint"
        raise FileNotFoundError(f"cannot resume: {what} in {self.folder}; start without --resume (a new run) "
                                f"or point --out-dir at the run to continue")


# ----------------------------------------------------------------------------------------------- monitoring

def read_scalars(logdir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """{tag: (steps, values)} from the TensorBoard event files in ``logdir`` (after a resume, the steps that the
    restarted run wrote again replace the old ones: ``SummaryWriter(purge_step=...)``)."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # the purge after a resume is expected, not news
    if not Path(logdir).exists():
        raise FileNotFoundError(f"no TensorBoard folder at {logdir}")
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in acc.Tags()["scalars"]}


def read_texts(logdir: str | Path) -> dict[str, list[tuple[int, str]]]:
    """{tag: [(step, text)]} of ``SummaryWriter.add_text`` entries."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        out[tag.removesuffix("/text_summary")] = [(e.step, e.tensor_proto.string_val[0].decode())
                                                   for e in acc.Tensors(tag)]
    return out


def flops_per_token(n_params: int, n_layer: int, n_embd: int, context: int) -> float:
    """Training FLOPs per token: 6 N for the weights plus 12 L d T for attention (Kaplan et al. 2020;
    nanoGPT's ``estimate_mfu``), N without the position embeddings."""
    return 6 * n_params + 12 * n_layer * n_embd * context


# ----------------------------------------------------------------------------------------------- processes

def script_env(threads: int = 2) -> dict:
    """The environment for a training subprocess: helpers importable from this checkout, unbuffered output."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def torchrun_cmd(script: str | Path, *args, nproc: int = 2) -> list[str]:
    """``torchrun --nproc_per_node nproc script args`` on a free local port (as ``python -m torch.distributed.run``)."""
    from .dist import free_port
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *map(str, args)]


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, every process it started (torchrun starts its workers in their own sessions, so killing
    the group alone would leave them running) and its process group."""
    import psutil
    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run(cmd: list[str], *, threads: int = 2, timeout: float = 300, kill_when: str | None = None) -> dict:
    """Run ``cmd`` and collect its output. With ``kill_when`` (a regular expression), send SIGKILL to the whole
    process tree (torchrun and every worker: a power cut, not a polite stop) as soon as a printed line matches.
    Returns {"out": output, "killed": bool, "returncode": int, "seconds": float}; raises RuntimeError with the
    output's tail if the command fails on its own or runs past ``timeout`` seconds."""
    pattern = re.compile(kill_when) if kill_when else None
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=script_env(threads), start_new_session=True)
    lines, killed = [], False
    try:
        for line in p.stdout:
            lines.append(line)
            if pattern is not None and not killed and pattern.search(line):
                _kill_tree(p.pid)
                killed = True
            if time.perf_counter() - t0 > timeout:
                _kill_tree(p.pid)
                raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} … ran past {timeout} s:\n{''.join(lines)[-3000:]}")
        p.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    finally:
        if p.poll() is None:
            _kill_tree(p.pid)
            p.wait()
    out = "".join(lines)
    if p.returncode != 0 and not killed:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed (exit {p.returncode}):\n{out[-4000:]}")
    return {"out": out, "killed": killed, "returncode": p.returncode, "seconds": time.perf_counter() - t0}


def summary(out: str) -> dict:
    """The ``summary {json}`` line that scripts/train.py prints last."""
    lines = [ln for ln in out.splitlines() if ln.startswith("summary ")]
    if not lines:
        raise ValueError(f"no 'summary' line in the output (did the run finish?):\n{out[-2000:]}")
    return json.loads(lines[-1][len("summary "):])
