"""Shared code of the notebook companion to 《從零建構大模型》.

Chapters import what they need from here; chapter-specific models live in their own modules
(``helpers.gpt``, ``helpers.bert``, ``helpers.vit``, ...).
"""
from .env import autocast, bf16_fast, bf16_runs, environment_report, get_device, seed_everything
from .layers import (
                     FeedForward,
                     LearnedPositionalEncoding,
                     MultiHeadAttention,
                     Residual,
                     SinusoidalPositionalEncoding,
                     TransformerBlock,
                     causal_mask,
                     padding_mask,
                     scaled_dot_product_attention,
)
from .report import elapsed, report
from .train import count_parameters, fit, load_checkpoint, save_checkpoint

_LAZY = {"plot_attention": "plot", "plot_history": "plot", "set_style": "plot"}  # matplotlib only when asked


def __getattr__(name):  # keeps `import helpers` free of matplotlib, e.g. in the DDP worker processes of ch07/ch11
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")


__all__ = [
    "autocast", "bf16_fast", "bf16_runs", "environment_report", "get_device", "seed_everything", "FeedForward",
    "LearnedPositionalEncoding", "MultiHeadAttention", "Residual", "SinusoidalPositionalEncoding", "TransformerBlock", "causal_mask",
    "padding_mask", "scaled_dot_product_attention", "plot_attention", "plot_history", "set_style", "elapsed",
    "report", "count_parameters", "fit", "load_checkpoint", "save_checkpoint",
]
