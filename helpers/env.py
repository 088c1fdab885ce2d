"""Device choice, seeding, the bf16 decision and the environment report of chapter 00."""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import random
import subprocess
import time

import numpy as np
import torch

__all__ = ["get_device", "seed_everything", "cpu_flags", "bf16_runs", "bf16_fast", "autocast", "environment_report"]

# CPU instruction-set extensions that do bf16 arithmetic natively (x86: AVX-512 BF16, AMX; Arm: the BF16 extension)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_ISA_SHOWN = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "bf16", "sve")


def get_device(prefer: str | None = None) -> torch.device:
    """CUDA if available, then Apple MPS, then CPU. ``prefer`` (or $LLMBOOK_DEVICE) forces one."""
    prefer = prefer or os.environ.get("LLMBOOK_DEVICE")
    if prefer:
        if prefer not in {"cuda", "mps", "cpu"} and not prefer.startswith("cuda:"):
            raise ValueError(f"unknown device {prefer!r}; pass 'cuda', 'cuda:N', 'mps' or 'cpu'")
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} asked for, but this PyTorch sees no CUDA GPU; pass 'cpu'")
        if prefer == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' asked for, but Apple MPS is not available here; pass 'cpu'")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 42, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a torch.Generator seeded the same way.

    ``deterministic=True`` also asks PyTorch for deterministic kernels (slower on GPU; needed for bit-exact reruns).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def _device(device) -> torch.device:
    return get_device() if device is None else torch.device(device)


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's instruction-set flags (Linux /proc/cpuinfo, macOS sysctl), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86 / Arm
                    return frozenset(value.split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
            return frozenset({"bf16", "asimd"} if out == "1" else {"asimd"}) if out else None
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def bf16_runs(device: torch.device | str | None = None) -> bool:
    """Whether a bfloat16 matmul *runs* on ``device`` (true on every recent x86 CPU, however slowly)."""
    device = _device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
        return bool((a @ a).float().sum().item() == 8.0)
    except (RuntimeError, TypeError):
        return False


def _timed_bf16_speedup(n: int = 256, repeat: int = 5) -> float:
    """fp32 time / bf16 time of an n×n CPU matmul (best of ``repeat``): > 1 means bf16 is faster."""
    def best(dtype):
        a = torch.randn(n, n).to(dtype)
        a @ a  # warm-up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t0)
        return min(times)
    return best(torch.float32) / best(torch.bfloat16)


@functools.cache
def _bf16_fast_cached(device: torch.device) -> bool:
    if device.type == "cuda":  # tensor cores with bf16: Ampere (compute capability 8.0) and newer
        return torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type != "cpu":  # MPS and others: float32 unless LLMBOOK_BF16=1
        return False
    flags = cpu_flags()
    if flags is not None:
        return any(f in flags for f in BF16_CPU_FLAGS)
    return bf16_runs(device) and _timed_bf16_speedup() > 1.2  # flags unknown (e.g. Windows): measure


def bf16_fast(device: torch.device | str | None = None) -> bool:
    """Whether bf16 autocast *pays off* on ``device``: by capability, never just because it runs.

    CUDA: compute capability ≥ 8.0. CPU: the ISA flags ``avx512_bf16``, ``amx_bf16`` or Arm ``bf16`` (where the
    flags cannot be read, a timed bf16-vs-fp32 matmul). Without them PyTorch's CPU bf16 matmuls take a slow path
    (measured on an AVX2-only CPU: 56× slower than fp32). ``LLMBOOK_BF16=1`` or ``0`` overrides the decision.
    """
    forced = os.environ.get("LLMBOOK_BF16", "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"LLMBOOK_BF16 must be '0' (float32) or '1' (bf16 autocast), got {forced!r}")
        return forced == "1"
    return _bf16_fast_cached(_device(device))


def autocast(device: torch.device | str | None = None, enabled: bool | None = None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in bfloat16 on ``device``, on where :func:`bf16_fast` says it pays off (or as ``enabled``).

    Weights and optimizer state stay float32; matmuls run in bf16. Use it around the forward pass and the loss.
    """
    device = _device(device)
    if enabled is None:
        enabled = bf16_fast(device)
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None (decide by capability), got {enabled!r}")
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


PACKAGES = ("torch", "torchvision", "transformers", "tokenizers", "datasets", "numpy", "matplotlib", "tqdm",
            "jupyterlab", "nbval", "ipywidgets", "safetensors")


def environment_report(packages: tuple[str, ...] = PACKAGES) -> dict:
    """Python, PyTorch, accelerator, CPU model and ISA, bf16 (runs / fast), cores, memory and package versions."""
    device = get_device()
    flags = cpu_flags()
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_isa": None if flags is None else " ".join(f for f in _ISA_SHOWN if f in flags) or "-",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": None if _memory_gib() is None else round(_memory_gib(), 1),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "bf16_runs": bf16_runs(device),
        "bf16_fast": bf16_fast(device),
        "bf16_forced": os.environ.get("LLMBOOK_BF16") or None,
    }
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info["packages"] = versions
    return info
