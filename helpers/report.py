"""``report(...)``: one ``RESULTS {json}`` line of a chapter's measured headline figures."""
from __future__ import annotations

import json
import math
import time

__all__ = ["report", "elapsed"]

_START = time.perf_counter()  # set when a notebook first imports helpers
_RESERVED = ("chapter", "seconds")  # keys report() writes itself


def elapsed() -> float:
    """Seconds since ``helpers`` was first imported (≈ since the notebook started)."""
    return time.perf_counter() - _START


def _clean(v):
    if hasattr(v, "item"):  # numpy / torch scalars
        v = v.item()
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"report() got a non-finite figure {v}; a headline figure must be a real number")
        return float(f"{v:.4g}")  # 4 significant digits: 1.01e-07 stays 1.01e-07, 1234567.0 becomes 1235000.0
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    raise TypeError(f"report() figures must be numbers or strings, got {type(v).__name__}")


def report(chapter: int, /, **figures) -> None:
    """Print one line ``RESULTS {"chapter": N, ...figures, "seconds": elapsed}`` (README's table is built from it).

    Floats keep 4 significant digits; ints and strings are printed as given.
    """
    if isinstance(chapter, bool) or not isinstance(chapter, int) or not 0 <= chapter <= 12:
        raise ValueError(f"chapter must be an int from 0 to 12, got {chapter!r}")
    if not figures:
        raise ValueError("report() needs at least one figure, e.g. report(1, val_loss=1.62)")
    reserved = [k for k in _RESERVED if k in figures]
    if reserved:
        raise ValueError(f"{', '.join(reserved)} is set by report() itself; rename the figure, e.g. train_seconds=...")
    out = {"chapter": chapter, **{k: _clean(v) for k, v in figures.items()}, "seconds": round(elapsed(), 1)}
    print("RESULTS " + json.dumps(out, ensure_ascii=False))
