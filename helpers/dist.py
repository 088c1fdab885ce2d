"""Distributed training for chapter 07 (reused by chapter 11): launching ``torchrun`` from Python with a free port
and a timeout, input checks, the precision policy (bf16 / fp16 + GradScaler / fp32 by capability), and Megatron-style
tensor-parallel layers written by hand (column- then row-parallel MLP, attention split by heads).

Worker processes import this module, so it stays free of matplotlib and notebook code."""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

__all__ = ["BACKENDS", "free_port", "check_backend", "check_world", "launch", "run_python", "amp_policy", "init_from_env",
           "AllReduceSum", "CopyToParallel", "ColumnParallelLinear", "RowParallelLinear", "ParallelMLP",
           "ParallelAttention", "make_mlp", "make_data", "gpipe_timeline", "bubble_fraction"]

BACKENDS = ("gloo", "nccl", "mpi", "ucc")


# --------------------------------------------------------------------------- checks and launching

def free_port() -> int:
    """A TCP port that is free on this machine now (the OS picks it), for ``--master_port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is a torch.distributed backend name, else raise ValueError."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use 'gloo' (CPU) or 'nccl' (CUDA GPUs), or one of {BACKENDS}")
    return backend


def check_world(world_size: int, *, rank: int | None = None, batch: int | None = None,
                heads: int | None = None, features: int | None = None) -> None:
    """Raise ValueError unless ``world_size`` ≥ 1, ``0 ≤ rank < world_size`` and ``world_size`` divides the global
    ``batch``, the attention ``heads`` and the MLP ``features`` that are split across ranks (those given)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size):
        raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
    for name, n, what in (("batch", batch, "each rank gets batch // world_size examples"),
                          ("heads", heads, "each rank holds heads // world_size attention heads"),
                          ("features", features, "each rank holds features // world_size hidden units")):
        if n is not None and (not isinstance(n, int) or n < 1 or n % world_size):
            raise ValueError(f"world_size {world_size} does not divide {name}={n!r} ({what}); choose a {name} "
                             f"that is a multiple of {world_size}, or another world size")


def launch(script: str | Path, *args: str, nproc: int = 2, timeout: float = 120, threads: int = 1,
           env: dict | None = None) -> str:
    """Run ``python -m torch.distributed.run --nproc_per_node nproc script args`` (= ``torchrun``) on a free port,
    each rank with ``OMP_NUM_THREADS=threads``. Return the combined stdout. If a rank fails or the run exceeds
    ``timeout`` seconds, raise RuntimeError with the tail of the output (the failing rank's traceback)."""
    check_world(nproc)
    if not Path(script).exists():
        raise ValueError(f"no script at {script}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *map(str, args)]
    root = str(Path(__file__).resolve().parents[1])  # the workers import helpers from this checkout
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    run_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "PYTHONPATH": path,
               **(env or {})}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise RuntimeError(f"torchrun {script} timed out after {timeout} s; output:\n{out[-3000:]}\n{err[-3000:]}") from None
    if p.returncode != 0:
        raise RuntimeError(f"torchrun {script} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-6000:]}")
    return p.stdout


def run_python(script: str | Path, *args: str, timeout: float = 120, threads: int = 2) -> str:
    """Run ``python script args`` as one process (the single-machine, no-torchrun path); return its stdout, or
    raise RuntimeError with its stderr if it fails or runs past ``timeout`` seconds."""
    if not Path(script).exists():
        raise ValueError(f"no script at {script}")
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}
    try:
        p = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{script} timed out after {timeout} s") from None
    if p.returncode != 0:
        raise RuntimeError(f"{script} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-6000:]}")
    return p.stdout


def init_from_env(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...);
    return (rank, world_size, device). nccl and one GPU per local rank where CUDA exists, else gloo on the CPU.
    Without torchrun's variables, run as a single process (0, 1, device) without a group."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    backend = check_backend(backend or ("nccl" if cuda else "gloo"))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda and backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), device


def amp_policy(device: torch.device | str, precision: str = "auto") -> tuple[torch.dtype, bool]:
    """(compute dtype, use GradScaler) for ``precision`` in auto/fp32/bf16/fp16. ``auto``: bf16 where
    ``helpers.bf16_fast`` says it pays off (CPU with AVX-512 BF16/AMX, Ampere+ GPU), fp16 + GradScaler on older
    GPUs, else float32. fp16 always comes with loss scaling."""
    from .env import bf16_fast
    device = torch.device(device)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    if precision == "auto":
        precision = "bf16" if bf16_fast(device) else "fp16" if device.type == "cuda" else "fp32"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return dtype, dtype == torch.float16


def make_mlp(seed: int = 0, width: int = 64, depth: int = 8) -> nn.Module:
    """The toy model of the DDP and ZeRO demos: ``depth`` Linear layers (32 → width … → 10) with tanh."""
    torch.manual_seed(seed)
    layers = [nn.Linear(32, width), nn.Tanh()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def make_data(n: int, seed: int = 1) -> TensorDataset:
    """``n`` examples (x in R^32, 10 classes) for :func:`make_mlp`, in the default float dtype."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 32, generator=g)
    y = (X[:, :10] + 0.5 * torch.randn(n, 10, generator=g)).argmax(1)
    return TensorDataset(X.to(torch.get_default_dtype()), y)


# --------------------------------------------------------------------------- tensor parallelism (Megatron-LM)

def _group_info(group) -> tuple[int, int]:
    if not dist.is_initialized():
        raise RuntimeError("tensor-parallel layers need a process group: call dist.init_process_group first")
    return dist.get_rank(group), dist.get_world_size(group)


class AllReduceSum(torch.autograd.Function):
    """Megatron's ``g``: forward sums the partial results of all ranks, backward passes the gradient through."""

    @staticmethod
    def forward(ctx, x: Tensor, group=None) -> Tensor:
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class CopyToParallel(torch.autograd.Function):
    """Megatron's ``f``: forward is the identity (every rank has the full input), backward sums the input
    gradients of all ranks (each rank saw only its slice of the weights)."""

    @staticmethod
    def forward(ctx, x: Tensor, group=None) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ColumnParallelLinear(nn.Module):
    """This rank's block of output rows of ``full`` (an nn.Linear): y_local = x W_rankᵀ + b_rank."""

    def __init__(self, full: nn.Linear, rank: int, world_size: int):
        super().__init__()
        check_world(world_size, rank=rank, features=full.out_features)
        rows = full.out_features // world_size
        sl = slice(rank * rows, (rank + 1) * rows)
        self.weight = nn.Parameter(full.weight.detach()[sl].clone())
        self.bias = None if full.bias is None else nn.Parameter(full.bias.detach()[sl].clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """This rank's block of input columns of ``full``: a partial product; the caller sums over ranks. The bias is
    added once, by rank 0."""

    def __init__(self, full: nn.Linear, rank: int, world_size: int):
        super().__init__()
        check_world(world_size, rank=rank, features=full.in_features)
        cols = full.in_features // world_size
        self.weight = nn.Parameter(full.weight.detach()[:, rank * cols:(rank + 1) * cols].clone())
        self.bias = None if full.bias is None or rank else nn.Parameter(full.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class ParallelMLP(nn.Module):
    """``fc2(act(fc1(x)))`` split across ranks: fc1 by output rows, fc2 by input columns, so the activation stays
    local and the forward needs a single all_reduce (and the backward one more, for the input gradient)."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, rank: int, world_size: int, activation=F.gelu, group=None):
        super().__init__()
        self.fc1 = ColumnParallelLinear(fc1, rank, world_size)
        self.fc2 = RowParallelLinear(fc2, rank, world_size)
        self.activation, self.group = activation, group

    def forward(self, x: Tensor) -> Tensor:
        x = CopyToParallel.apply(x, self.group)
        return AllReduceSum.apply(self.fc2(self.activation(self.fc1(x))), self.group)


class ParallelAttention(nn.Module):
    """Multi-head self-attention with this rank's ``n_head // world_size`` heads: q, k, v projections split by
    output rows (whole heads), the output projection by input columns; one all_reduce in the forward.
    ``qkv`` is a Linear(d, 3d) laid out as [q | k | v], ``proj`` a Linear(d, d)."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, n_head: int, rank: int, world_size: int, group=None):
        super().__init__()
        d = proj.in_features
        check_world(world_size, rank=rank, heads=n_head)
        self.local_heads, self.head_dim, self.group = n_head // world_size, d // n_head, group
        w = self.local_heads * self.head_dim
        rows = torch.cat([torch.arange(i * d + rank * w, i * d + (rank + 1) * w) for i in range(3)])
        self.qkv_weight = nn.Parameter(qkv.weight.detach()[rows].clone())
        self.qkv_bias = nn.Parameter(qkv.bias.detach()[rows].clone())
        self.proj = RowParallelLinear(proj, rank, world_size)

    def forward(self, x: Tensor, causal: bool = True) -> Tensor:
        B, T, _ = x.shape
        x = CopyToParallel.apply(x, self.group)
        q, k, v = F.linear(x, self.qkv_weight, self.qkv_bias).split(self.local_heads * self.head_dim, dim=-1)
        q, k, v = (t.view(B, T, self.local_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if causal:
            att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
        return AllReduceSum.apply(self.proj(y), self.group)


# --------------------------------------------------------------------------- pipeline schedule

def gpipe_timeline(stages: int, micro_batches: int) -> list[tuple[int, int, str, int]]:
    """GPipe's schedule as (stage, time slot, 'F' or 'B', micro-batch): all forwards, then all backwards, each
    micro-batch taking one slot per stage (backward = one slot too, for the picture)."""
    check_world(stages)
    if not isinstance(micro_batches, int) or micro_batches < 1:
        raise ValueError(f"micro_batches must be an int >= 1, got {micro_batches!r}")
    fwd = [(s, s + m, "F", m) for s in range(stages) for m in range(micro_batches)]
    t0 = stages + micro_batches - 1
    bwd = [(s, t0 + (stages - 1 - s) + m, "B", m) for s in range(stages) for m in range(micro_batches)]
    return fwd + bwd


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """Idle share of a GPipe step: (p - 1) / (m + p - 1) for p stages and m micro-batches."""
    check_world(stages)
    return (stages - 1) / (micro_batches + stages - 1)
