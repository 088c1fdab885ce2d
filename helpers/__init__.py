"""Shared code of the notebook companion to 《從零建構大模型》.

Chapters import what they need from here; chapter-specific models live in their own modules
(``helpers.gpt``, ``helpers.bert``, ``helpers.vit``, ...).
"""
from .env import environment_report, get_device, seed_everything
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
from .plot import plot_attention, plot_history, set_style
from .report import elapsed, report
from .train import count_parameters, fit, load_checkpoint, save_checkpoint

__all__ = [
    "environment_report", "get_device", "seed_everything", "FeedForward", "LearnedPositionalEncoding",
    "MultiHeadAttention", "Residual", "SinusoidalPositionalEncoding", "TransformerBlock", "causal_mask",
    "padding_mask", "scaled_dot_product_attention", "plot_attention", "plot_history", "set_style", "elapsed",
    "report", "count_parameters", "fit", "load_checkpoint", "save_checkpoint",
]
