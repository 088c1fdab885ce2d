"""Fine-tuning in practice (chapter 12): stratified splits, calibration (reliability bins, ECE, temperature scaling),
a compact character vocabulary for a small Chinese BERT, and the saved Chinese review classifier with ``predict``.

Command line (after chapter 12 has saved the model)::

    python -m helpers.finetune "这家酒店很干净" "送餐太慢了"

prints each text's label and probability. ``--model DIR`` picks another saved model folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .bert import Bert, BertClassifier, BertConfig
from .train import load_checkpoint, save_checkpoint

__all__ = ["stratified_split", "reliability_bins", "expected_calibration_error", "fit_temperature",
           "build_char_vocab", "remap_ids", "default_model_dir", "save_review_classifier", "ReviewClassifier",
           "load_review_classifier", "predict", "main", "FORMAT_VERSION", "SPECIALS"]

FORMAT_VERSION = 1  # bump when the saved layout changes; load refuses other versions
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # compact ids 0..4, in this order


# --------------------------------------------------------------------------------------------------- splitting

def stratified_split(labels: Sequence, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> list[np.ndarray]:
    """Index arrays, one per fraction, with every label (any hashable: a class, or a (source, class) pair) spread
    over the parts in the same proportions. Each class's indices are shuffled with ``seed``, then cut."""
    labels = list(labels)
    if not labels:
        raise ValueError("labels is empty: pass one label per example")
    fr = [float(f) for f in fractions]
    if len(fr) < 2 or any(f <= 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be two or more positive numbers summing to 1, e.g. (0.8, 0.1, 0.1); got {fractions!r}")
    rng = np.random.default_rng(seed)
    by_class: dict = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    parts: list[list[int]] = [[] for _ in fr]
    cuts = np.cumsum(fr)[:-1]
    for lab in sorted(by_class, key=repr):
        idx = rng.permutation(by_class[lab])
        bounds = [0, *np.round(cuts * len(idx)).astype(int), len(idx)]
        for k in range(len(fr)):
            parts[k].extend(idx[bounds[k]:bounds[k + 1]].tolist())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


# ------------------------------------------------------------------------------------------------- calibration

def _probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs.detach().cpu() if isinstance(probs, Tensor) else probs, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be (n_examples, n_classes) class probabilities, got shape {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must be ({p.shape[0]},) class ids to match probs, got shape {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("no examples: probs and labels are empty")
    if (p < -1e-6).any() or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ValueError("probs rows must be probabilities summing to 1: apply softmax to logits first")
    return p, y.astype(np.int64)


def reliability_bins(probs, labels, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width confidence bins over (0, 1]: per bin the mean confidence (max probability), the accuracy and the
    count (empty bins have NaN confidence/accuracy). Plot accuracy against confidence for a reliability diagram."""
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
    p, y = _probs_labels(probs, labels)
    conf, correct = p.max(1), (p.argmax(1) == y).astype(np.float64)
    which = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, n_bins) / count
        acc = np.bincount(which, correct, n_bins) / count
    return {"edges": np.linspace(0, 1, n_bins + 1), "confidence": mean_conf, "accuracy": acc, "count": count}


def expected_calibration_error(probs, labels, n_bins: int = 10) -> float:
    """ECE: sum over bins of (bin share) × |accuracy − mean confidence| (Guo et al., 2017)."""
    b = reliability_bins(probs, labels, n_bins)
    n, nz = b["count"].sum(), b["count"] > 0
    return float((b["count"][nz] / n * np.abs(b["accuracy"][nz] - b["confidence"][nz])).sum())


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the cross-entropy of ``logits / T`` on held-out (validation) data.

    Fit it on validation data, never on the test set; dividing by T keeps every argmax, so accuracy is unchanged."""
    z = torch.as_tensor(logits, dtype=torch.float64).detach().cpu()
    y = torch.as_tensor(labels).detach().cpu().long()
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"logits must be (n, n_classes) and labels (n,), got {tuple(z.shape)} and {tuple(y.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


# ------------------------------------------------------------------------------------ compact character vocabulary

def build_char_vocab(id_lists: Iterable[Sequence[int]], tokenizer, min_count: int = 2) -> list[int]:
    """The tokenizer ids (e.g. bert-base-chinese's 21,128) kept in a compact vocabulary: the five SPECIALS first,
    then every id seen at least ``min_count`` times, most frequent first. Index in the list = compact id."""
    counts = Counter(i for ids in id_lists for i in ids)
    special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIALS]
    if any(s is None or s == tokenizer.unk_token_id and t != "[UNK]" for s, t in zip(special, SPECIALS)):
        raise ValueError(f"the tokenizer lacks one of {SPECIALS}; use a BERT WordPiece tokenizer")
    return special + [i for i, n in counts.most_common() if n >= min_count and i not in special]


def remap_ids(ids: Sequence[int], lookup: np.ndarray) -> list[int]:
    """Tokenizer ids → compact ids with ``lookup`` (tokenizer vocabulary size, −1 for ids not kept → [UNK] = 1)."""
    out = lookup[np.asarray(ids, dtype=np.int64)] if len(ids) else np.zeros(0, dtype=np.int64)
    return np.where(out < 0, 1, out).tolist()


def _lookup(kept: Sequence[int], size: int) -> np.ndarray:
    table = np.full(size, -1, dtype=np.int64)
    table[np.asarray(kept, dtype=np.int64)] = np.arange(len(kept))
    return table


# ------------------------------------------------------------------------------------- the saved review classifier

def default_model_dir() -> Path:
    """Where chapter 12 saves the Chinese review classifier: ``<data cache>/models/zh_review_classifier`` (not in git)."""
    from .data import cache_dir
    return cache_dir() / "models" / "zh_review_classifier"


def save_review_classifier(folder: str | Path, model: BertClassifier, tokenizer, kept_ids: Sequence[int],
                           labels: Sequence[str] = ("負面", "正面"), temperature: float = 1.0,
                           window: int | None = None) -> Path:
    """Save weights + config (``model.pt``, written atomically, read with ``weights_only=True``), the compact
    vocabulary and the tokenizer into ``folder``. ``window``: tokens per chunk incl. [CLS]/[SEP] (≤ max_positions)."""
    cfg = model.bert.config
    window = cfg.max_positions if window is None else window
    if not 3 <= window <= cfg.max_positions:
        raise ValueError(f"window must be in [3, max_positions={cfg.max_positions}], got {window}")
    if len(kept_ids) != cfg.vocab_size:
        raise ValueError(f"kept_ids has {len(kept_ids)} ids but the model's vocab_size is {cfg.vocab_size}")
    if len(labels) != model.head.out_features:
        raise ValueError(f"{len(labels)} label names for a head with {model.head.out_features} outputs")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    meta = {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(cfg), "pooling": model.pooling,
            "labels": list(labels), "temperature": float(temperature), "window": int(window),
            "kept_ids": [int(i) for i in kept_ids]}
    save_checkpoint(folder / "model.pt", meta=meta, model=model.state_dict())
    tmp = folder / "meta.json.tmp"  # human-readable copy of the metadata (the checkpoint's copy is the one used)
    tmp.write_text(json.dumps({k: v for k, v in meta.items() if k != "kept_ids"}, ensure_ascii=False, indent=1),
                   encoding="utf-8")
    tmp.replace(folder / "meta.json")
    return folder


class ReviewClassifier:
    """A loaded review classifier. ``predict(texts)`` → one ``{"label", "prob", "chunks"}`` dict per text.

    A text longer than the window is cut into consecutive chunks of ``window − 2`` tokens; each chunk is classified
    and the chunks' probabilities are averaged (``chunks`` says how many were used)."""

    def __init__(self, model: BertClassifier, tokenizer, kept_ids: Sequence[int], labels: Sequence[str],
                 temperature: float = 1.0, window: int = 64):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.labels, self.temperature, self.window = list(labels), float(temperature), int(window)
        self.lookup = _lookup(kept_ids, len(tokenizer))

    def encode(self, text: str) -> list[list[int]]:
        """Compact ids of ``text``, cut into chunks of at most window − 2 tokens, each wrapped in [CLS] … [SEP]."""
        ids = remap_ids(self.tokenizer(text, add_special_tokens=False)["input_ids"], self.lookup)
        n = self.window - 2
        return [[2, *ids[i:i + n], 3] for i in range(0, max(len(ids), 1), n)]

    @torch.no_grad()
    def probabilities(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, list[int]]:
        """(n_texts, n_labels) class probabilities (temperature applied, chunks averaged) and chunks per text."""
        texts = _check_texts(texts)
        chunks, owner = [], []
        for k, t in enumerate(texts):
            for c in self.encode(t):
                chunks.append(c)
                owner.append(k)
        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i]))  # length-sorted batches: little padding
        probs = torch.zeros(len(chunks), len(self.labels), dtype=torch.float64)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids = torch.zeros(len(idx), max(len(chunks[i]) for i in idx), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, :len(chunks[i])] = torch.tensor(chunks[i])
            logits = self.model(ids, (ids != 0).long()).double()
            probs[idx] = F.softmax(logits / self.temperature, -1)
        per_text = torch.zeros(len(texts), len(self.labels), dtype=torch.float64).index_add_(0, torch.tensor(owner), probs)
        n_chunks = np.bincount(owner, minlength=len(texts))
        return (per_text / torch.tensor(n_chunks, dtype=torch.float64)[:, None]).numpy(), n_chunks.tolist()

    def predict(self, texts: Sequence[str]) -> list[dict]:
        probs, n_chunks = self.probabilities(texts)
        return [{"label": self.labels[int(p.argmax())], "prob": float(p.max()), "chunks": c}
                for p, c in zip(probs, n_chunks)]


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of strings, got one string {texts[:20]!r}…; wrap it: predict([text])")
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts is empty: pass at least one review, e.g. predict(['這家酒店很乾淨'])")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a string; pass review texts only")
        if not t.strip():
            raise ValueError(f"texts[{i}] is empty or only whitespace; there is nothing to classify")
    return list(texts)


def load_review_classifier(folder: str | Path | None = None) -> ReviewClassifier:
    """Load what ``save_review_classifier`` wrote; refuse (ValueError) a model whose saved config does not match
    this code: another format version, unknown or missing config fields, or weights of other shapes."""
    from transformers import BertTokenizerFast
    folder = Path(folder) if folder is not None else default_model_dir()
    path = folder / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"no saved classifier at {path}: run notebooks/12_finetuning.ipynb first (it saves "
                                f"the model to {default_model_dir()}), or pass the folder you saved to")
    ck = load_checkpoint(path)
    meta = ck.get("meta", {})
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {meta.get('format_version')!r}, this code reads version "
                         f"{FORMAT_VERSION}: re-run chapter 12 to save the model again with this code")
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    saved = set(meta.get("config", {}))
    if saved != fields:
        raise ValueError(f"{path}: the saved config does not match this code's BertConfig (unknown "
                         f"{sorted(saved - fields)}, missing {sorted(fields - saved)}); re-save the model with this code")
    cfg = BertConfig(**meta["config"])
    if len(meta["kept_ids"]) != cfg.vocab_size:
        raise ValueError(f"{path}: {len(meta['kept_ids'])} vocabulary ids but config.vocab_size = {cfg.vocab_size}")
    model = BertClassifier(Bert(cfg), num_labels=len(meta["labels"]), pooling=meta["pooling"])
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ck["model"].items()}
    if want != got:
        diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise ValueError(f"{path}: the saved weights do not match the saved config {meta['config']} "
                         f"(first differences: {', '.join(f'{k} saved {got.get(k)} vs code {want.get(k)}' for k in diff[:3])})")
    model.load_state_dict(ck["model"])
    tok = BertTokenizerFast.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    if len(tok) <= max(meta["kept_ids"]):
        raise ValueError(f"{folder / 'tokenizer'} has {len(tok)} tokens, fewer than the saved vocabulary needs")
    return ReviewClassifier(model, tok, meta["kept_ids"], meta["labels"], meta["temperature"], meta["window"])


_LOADED: dict[Path, ReviewClassifier] = {}


def predict(texts: Sequence[str], folder: str | Path | None = None) -> list[dict]:
    """Classify Chinese reviews with the saved model (loaded once per folder): ``[{"label", "prob", "chunks"}]``.

    Errors: TypeError for a non-list or a non-string item, ValueError for an empty list or an empty string. Long
    texts are chunked (see ``ReviewClassifier``). The model was trained on simplified-Chinese reviews; characters it
    never saw (many traditional forms among them) become [UNK]."""
    texts = _check_texts(texts)
    key = (Path(folder) if folder is not None else default_model_dir()).resolve()
    if key not in _LOADED:
        _LOADED[key] = load_review_classifier(key)
    return _LOADED[key].predict(texts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.finetune",
                                 description="Classify Chinese reviews with chapter 12's saved classifier.")
    ap.add_argument("texts", nargs="+", help="one or more reviews, each in quotes")
    ap.add_argument("--model", default=None, help=f"saved model folder (default {default_model_dir()})")
    args = ap.parse_args(argv)
    try:
        results = predict(args.texts, args.model)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for t, r in zip(args.texts, results):
        print(f"{r['label']}\t{r['prob']:.3f}\t{t}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
