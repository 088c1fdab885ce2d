"""The figures several chapters draw, in one small consistent style."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["set_style", "plot_attention", "plot_history", "cjk_font"]


# Families that draw Chinese, best first; the first one installed on the system wins.
_CJK_FAMILIES = ("Noto Sans CJK", "Source Han Sans", "Noto Serif CJK", "Source Han Serif", "WenQuanYi", "SimHei",
                 "Microsoft JhengHei", "Microsoft YaHei", "PingFang", "Heiti", "AR PL")


def _installed_cjk_font() -> str | None:
    from matplotlib import font_manager
    names = {f.name for f in font_manager.fontManager.ttflist}
    for wanted in _CJK_FAMILIES:
        hits = sorted(n for n in names if wanted in n)
        if hits:  # Traditional Chinese face first (e.g. "Noto Sans CJK TC"), when the family has one
            return next((n for n in hits if n.endswith(" TC")), hits[0])
    return None


def cjk_font() -> str | None:
    """Family name matplotlib uses for Chinese: an installed CJK font, else Noto Sans CJK from the PyPI package
    ``noto-cjk-sans-otc`` (registered with matplotlib on first call); None when neither is there."""
    if (name := _installed_cjk_font()) is not None:
        return name
    try:
        from noto_cjk_sans_otc import FONT_PATH
    except ModuleNotFoundError:
        return None
    if not Path(str(FONT_PATH)).is_file():
        return None
    from matplotlib import font_manager
    font_manager.fontManager.addfont(str(FONT_PATH))
    return _installed_cjk_font()


def set_style() -> None:
    """Small figures, light grid, readable fonts; a CJK font (see ``cjk_font``) first, so Chinese labels draw."""
    plt.rcParams.update({
        "figure.figsize": (5, 3), "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "font.size": 9, "axes.titlesize": 10,
        "legend.fontsize": 8, "legend.frameon": False, "image.cmap": "viridis",
    })
    if (name := cjk_font()) is not None:
        from matplotlib import font_manager
        plt.rcParams["font.sans-serif"] = [name, "DejaVu Sans"]  # the CJK font has Latin letters and digits too
        font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties(family=name)))
        plt.rcParams["axes.unicode_minus"] = font.get_char_index(0x2212) != 0  # "−" where the font has it


def plot_attention(weights, x_labels: Sequence[str] | None = None, y_labels: Sequence[str] | None = None,
                   ax=None, title: str = "attention weights", colorbar: bool = True):
    """Heatmap of a (query, key) attention matrix; rows are queries, columns the keys they attend to."""
    w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, dtype=float)
    if w.ndim != 2:
        raise ValueError(f"plot_attention needs a 2-D (query_len, key_len) matrix, got shape {w.shape}; "
                         f"pick one batch item and head, e.g. weights[0, 0]")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(3, 0.35 * w.shape[1] + 1.5), max(2.5, 0.35 * w.shape[0] + 1)))
    im = ax.imshow(w, vmin=0, vmax=max(w.max(), 1e-9), cmap="viridis")
    ax.grid(False)
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)), x_labels, rotation=90)
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), y_labels)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_history(history: dict, keys: Sequence[str] = ("loss",), ax=None, title: str = "training curve",
                 smooth: int = 1, logy: bool = False, xlabel: str = "step"):
    """Plot history[k] for each key; per-step keys against ``step``, eval keys against ``eval_step``."""
    if ax is None:
        _, ax = plt.subplots()
    for k in keys:
        if k not in history:
            raise ValueError(f"history has no {k!r}; it has {sorted(history)}")
        y = np.asarray(history[k], dtype=float)
        x = np.asarray(history["step"] if len(y) == len(history.get("step", [])) else history.get("eval_step", range(len(y))))
        if smooth > 1 and len(y) > smooth:
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            x = x[smooth - 1:]
        ax.plot(x, y, label=k, marker="o" if len(y) < 30 else None, ms=3)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    return ax
