"""Device choice, seeding and the environment report of chapter 00."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import random

import numpy as np
import torch

__all__ = ["get_device", "seed_everything", "environment_report"]


def get_device(prefer: str | None = None) -> torch.device:
    """CUDA if available, then Apple MPS, then CPU. ``prefer`` (or $LLMBOOK_DEVICE) forces one."""
    prefer = prefer or os.environ.get("LLMBOOK_DEVICE")
    if prefer:
        if prefer not in {"cuda", "mps", "cpu"} and not prefer.startswith("cuda:"):
            raise ValueError(f"unknown device {prefer!r}; pass 'cuda', 'cuda:N', 'mps' or 'cpu'")
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
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # CPU and MPS: try a tiny bf16 matmul
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
        return bool((a @ a).float().sum().item() == 8.0)
    except (RuntimeError, TypeError):
        return False


PACKAGES = ("torch", "torchvision", "transformers", "tokenizers", "datasets", "numpy", "matplotlib", "tqdm",
            "jupyterlab", "nbval", "ipywidgets", "safetensors")


def environment_report(packages: tuple[str, ...] = PACKAGES) -> dict:
    """Python, PyTorch, accelerator, bf16 support, CPU cores, memory and package versions, as a dict."""
    device = get_device()
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": None if _memory_gib() is None else round(_memory_gib(), 1),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "bf16_supported": _bf16_supported(device),
    }
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info["packages"] = versions
    return info
