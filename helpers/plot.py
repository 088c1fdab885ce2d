"""The figures several chapters draw, in one small consistent style."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["set_style", "plot_attention", "plot_history", "cjk_font", "draw_stack"]


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


def draw_stack(ax, labels: Sequence[str], x: float = 0.0, y: float = 0.0, width: float = 3.0, height: float = 0.42,
               gap: float = 0.3, colors: Sequence[str] | None = None, skips: Sequence[tuple[int, int]] = (),
               repeat: tuple[int, int, str] | None = None, fontsize: float = 8) -> list[tuple[float, float]]:
    """Draw a column of labelled boxes for an architecture diagram, ``labels[0]`` at the bottom, an arrow between
    consecutive boxes (data flows upward). ``skips``: (i, j) pairs, a residual connection that leaves below box i,
    runs beside the column and is added (⊕) above box j. ``repeat``: (i, j, text), a dashed frame around boxes
    i..j labelled e.g. "N ×". Returns the (x, y) centre of every box, bottom to top, for extra arrows."""
    from matplotlib.patches import FancyBboxPatch, Rectangle
    labels = list(labels)
    n = len(labels)
    if n == 0 or not all(isinstance(s, str) for s in labels):
        raise ValueError(f"labels must be a non-empty sequence of strings, got {labels!r}")
    if colors is not None and len(colors) != n:
        raise ValueError(f"colors needs one colour per label ({n}), got {len(colors)}")
    for i, j in skips:
        if not 0 <= i <= j < n:
            raise ValueError(f"skip ({i}, {j}) must satisfy 0 <= i <= j < {n} (from below box i to above box j)")
    if repeat is not None and not (len(repeat) == 3 and 0 <= repeat[0] <= repeat[1] < n):
        raise ValueError(f"repeat must be (first_box, last_box, text) with 0 <= first <= last < {n}, got {repeat!r}")
    step = height + gap
    centres = [(x, y + i * step) for i in range(n)]
    for i, (label, (cx, cy)) in enumerate(zip(labels, centres)):
        ax.add_patch(FancyBboxPatch((cx - width / 2, cy - height / 2), width, height, boxstyle="round,pad=0.02",
                                    fc=colors[i] if colors is not None else "#eef2f7", ec="#444", lw=0.8))
        ax.text(cx, cy, label, ha="center", va="center", fontsize=fontsize)
        if i + 1 < n:
            ax.annotate("", (cx, cy + height / 2 + gap), (cx, cy + height / 2),
                        arrowprops=dict(arrowstyle="-|>", color="#444", lw=0.8, shrinkA=0, shrinkB=0))
    side = x + width / 2 + 0.25
    for i, j in skips:
        lo, hi = centres[i][1] - height / 2 - gap / 2, centres[j][1] + height / 2 + gap / 2
        ax.plot([x, side, side], [lo, lo, hi], color="#888", lw=0.8)
        ax.annotate("", (x + 0.09, hi), (side, hi),
                    arrowprops=dict(arrowstyle="-|>", color="#888", lw=0.8, shrinkA=0, shrinkB=0))
        ax.text(x, hi, "⊕", ha="center", va="center", fontsize=fontsize + 3, zorder=5,
                bbox=dict(boxstyle="circle,pad=0.0", fc="white", ec="none"))
    if repeat is not None:
        i, j, text = repeat
        lo, hi = centres[i][1] - height / 2 - gap * 0.8, centres[j][1] + height / 2 + gap * 0.8
        left = x - width / 2 - 0.15
        ax.add_patch(Rectangle((left, lo), width + 0.7, hi - lo, fill=False, ls="--", ec="#666", lw=0.8))
        ax.text(left - 0.1, (lo + hi) / 2, text, ha="right", va="center", fontsize=fontsize + 1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.autoscale_view()
    return centres
