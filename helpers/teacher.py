"""The fine-tuned SST-2 teacher (chapters 05, 10, 12): all-MiniLM-L6-v2 with a mean-pool classification head,
trained once, deterministically, and kept in the data cache as safetensors.

``load_teacher()`` returns ``(model, tokenizer)``; if the cache has no teacher (or one made by another recipe) it
trains it first (recipe 1a of the notes: seeded SST-2 sentences, length-bucketed batches, frozen word embeddings,
AdamW with 10 % warm-up and linear decay, one pass) and saves it atomically. ``python -m helpers.teacher`` builds it
(``make data`` runs it).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .bert import Bert, BertClassifier, BertConfig, from_pretrained

__all__ = ["TeacherRecipe", "RECIPE", "teacher_path", "train_classifier", "evaluate", "save_classifier",
           "load_classifier", "build_teacher", "load_teacher", "encode"]


@dataclass(frozen=True)
class TeacherRecipe:
    """How the teacher is made. Any change gives a different file name, so a stale cache is never reused."""
    n_train: int = 8000      # SST-2 training sentences (datasets' shuffle(seed), first n); GPU: 67_349 (all)
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1      # share of the steps with linear warm-up, then linear decay to 0
    max_len: int = 64
    seed: int = 0
    grad_clip: float = 1.0

    def __post_init__(self):
        for k in ("n_train", "batch_size", "max_len"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TeacherRecipe.{k} must be a positive int, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"TeacherRecipe.lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"TeacherRecipe.warmup must be in [0, 1), got {self.warmup}")

    def tag(self) -> str:
        return f"n{self.n_train}_bs{self.batch_size}_lr{self.lr:g}_wd{self.weight_decay:g}_w{self.warmup:g}" \
               f"_len{self.max_len}_s{self.seed}"


RECIPE = TeacherRecipe()


def teacher_path(recipe: TeacherRecipe = RECIPE) -> Path:
    """Where the teacher made by ``recipe`` lives: ``helpers.data.cache_dir()/teacher/minilm_sst2_<tag>.safetensors``."""
    from .data import cache_dir
    return cache_dir() / "teacher" / f"minilm_sst2_{recipe.tag()}.safetensors"


def encode(tokenizer, texts, max_len: int = 64) -> list[list[int]]:
    """Token ids (with [CLS]/[SEP]) of ``texts``, truncated to ``max_len``."""
    return tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]


def train_classifier(model: nn.Module, batches: list, *, lr: float, weight_decay: float = 0.01, warmup: float = 0.1,
                     grad_clip: float = 1.0, seed: int = 0, log_every: int = 0) -> list[float]:
    """One pass of AdamW over ``batches`` (``(ids, attention_mask, labels)``) with linear warm-up and decay; only
    parameters with ``requires_grad`` are trained. Returns the training losses. Deterministic for a given seed."""
    if not batches:
        raise ValueError("batches is empty: pass a list of (ids, attention_mask, labels) batches, e.g. from "
                         "helpers.data.length_batches")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires grad: nothing to train")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps, warm = len(batches), max(1, int(warmup * len(batches)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    torch.manual_seed(seed)  # dropout
    model.train()
    losses, t0 = [], time.perf_counter()
    for i, (ids, am, y) in enumerate(batches):
        loss = F.cross_entropy(model(ids, am), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (i + 1) % log_every == 0:
            print(f"  step {i + 1}/{steps}  loss {sum(losses[-log_every:]) / log_every:.4f}  "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, batches: list) -> float:
    """Accuracy of ``model`` (in eval mode) over ``(ids, attention_mask, labels)`` batches."""
    model.eval()
    hits = total = 0
    for ids, am, y in batches:
        hits += (model(ids, am).argmax(-1) == y).sum().item()
        total += len(y)
    if not total:
        raise ValueError("no examples to evaluate")
    return hits / total


def save_classifier(model: BertClassifier, path: str | Path, **info) -> Path:
    """Save a BertClassifier (its BertConfig, pooling, heads per layer and ``info`` go in the safetensors metadata)
    atomically: a temporary file in the same folder, then ``os.replace``. Head-pruned models reload with their shapes."""
    from safetensors.torch import save_file
    if not isinstance(model, BertClassifier):
        raise TypeError(f"save_classifier needs a helpers.bert.BertClassifier, got {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": json.dumps(asdict(model.bert.config)), "pooling": model.pooling,
            "num_labels": str(model.head.out_features), "info": json.dumps(info),
            "heads": json.dumps([b.self_attn.n_heads for b in model.bert.blocks])}  # fewer after prune_heads
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_classifier(path: str | Path) -> tuple[BertClassifier, dict]:
    """A BertClassifier saved by ``save_classifier`` (in eval mode) and its ``info`` dict."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved classifier at {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} has no BertConfig in its metadata; was it written by helpers.teacher.save_classifier?")
    cfg = BertConfig(**json.loads(meta["config"]))
    model = BertClassifier(Bert(cfg), num_labels=int(meta.get("num_labels", 2)), pooling=meta.get("pooling", "mean"))
    heads = json.loads(meta.get("heads", "[]"))
    if heads and len(heads) != cfg.num_layers:
        raise ValueError(f"{path}: metadata lists heads for {len(heads)} layers, the config has {cfg.num_layers}")
    pruned = {i: list(range(n, cfg.num_heads)) for i, n in enumerate(heads) if n < cfg.num_heads}
    if pruned:  # a head-pruned model: shrink the projections to the saved shapes before loading the weights
        model.bert.prune_heads(pruned)
    model.load_state_dict(load_file(str(path)))
    return model.eval(), json.loads(meta.get("info", "{}"))


def _tokenizer():
    from transformers import AutoTokenizer

    from .data import minilm_path
    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


def build_teacher(recipe: TeacherRecipe = RECIPE, path: str | Path | None = None, verbose: bool = True) -> Path:
    """Fine-tune all-MiniLM-L6-v2 on SST-2 by ``recipe`` and save it (with its validation accuracy) to ``path``
    (default ``teacher_path(recipe)``). Deterministic: the same recipe gives the same weights on the same machine."""
    from .data import length_batches, load_sst2
    if not isinstance(recipe, TeacherRecipe):
        raise TypeError(f"recipe must be a helpers.teacher.TeacherRecipe, got {type(recipe).__name__}")
    path = Path(path) if path is not None else teacher_path(recipe)
    tok, sst = _tokenizer(), load_sst2()
    if recipe.n_train > len(sst["train"]):
        raise ValueError(f"TeacherRecipe.n_train={recipe.n_train} exceeds the {len(sst['train'])} SST-2 sentences")
    train = sst["train"].shuffle(seed=recipe.seed).select(range(recipe.n_train))
    X, y = encode(tok, train["sentence"], recipe.max_len), torch.tensor(train["label"])
    batches = length_batches(X, y, recipe.batch_size, shuffle_seed=recipe.seed)
    val = sst["validation"]
    val_batches = length_batches(encode(tok, val["sentence"], recipe.max_len), torch.tensor(val["label"]), 128)
    torch.manual_seed(recipe.seed)  # the head's initial weights
    model = BertClassifier(from_pretrained(), num_labels=2, pooling="mean")
    model.bert.embeddings.word.weight.requires_grad_(False)  # 11.7 M parameters out of AdamW: 18 % faster
    model.bert.pooler.requires_grad_(False)  # unused by the mean-pool head
    if verbose:
        print(f"training the SST-2 teacher ({recipe.n_train} sentences, {len(batches)} steps) -> {path}", flush=True)
    t0 = time.perf_counter()
    losses = train_classifier(model, batches, lr=recipe.lr, weight_decay=recipe.weight_decay, warmup=recipe.warmup,
                              grad_clip=recipe.grad_clip, seed=recipe.seed, log_every=50 if verbose else 0)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, val_batches)
    save_classifier(model, path, recipe=asdict(recipe), val_acc=acc, val_n=len(val), train_seconds=round(seconds, 1),
                    final_loss=sum(losses[-20:]) / len(losses[-20:]))
    if verbose:
        print(f"teacher: SST-2 validation accuracy {acc:.4f} on {len(val)} sentences; trained in {seconds:.0f} s; "
              f"saved {path.stat().st_size / 1e6:.1f} MB", flush=True)
    return path


def load_teacher(recipe: TeacherRecipe = RECIPE, train_if_missing: bool = True, verbose: bool = True):
    """``(model, tokenizer)``: the fine-tuned SST-2 teacher (a ``BertClassifier``, mean pooling, eval mode) and the
    MiniLM tokenizer. Trained and cached first if missing (``train_if_missing=False`` raises FileNotFoundError)."""
    path = teacher_path(recipe)
    if not path.exists():
        if not train_if_missing:
            raise FileNotFoundError(f"no teacher at {path}; build it with `python -m helpers.teacher` (make data)")
        build_teacher(recipe, path, verbose=verbose)
    model, info = load_classifier(path)
    model.info = info
    return model, _tokenizer()


if __name__ == "__main__":
    p = teacher_path()
    if p.exists():
        _, info = load_classifier(p)
        print(f"teacher already cached at {p} (validation accuracy {info['val_acc']:.4f})")
    else:
        build_teacher()
