"""Text cleaning, de-duplication and augmentation for English and Chinese (chapter 06).

Cleaning: markup/URL removal, NFKC, full-width -> half-width, whitespace/control characters, length filter,
exact de-duplication by hash and MinHash near-duplicates. Augmentation: the EDA operations (synonym
replacement, random insertion, swap, deletion), character noise and span masking. Every random function takes
an explicit ``rng`` (a ``random.Random`` or an int seed), so results are reproducible.
"""
from __future__ import annotations

import hashlib
import html
import random
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "strip_markup", "remove_urls", "to_halfwidth", "normalize_unicode", "normalize_whitespace", "clean_text",
    "length_ok", "text_hash", "dedup_exact", "shingles", "jaccard", "minhash_signatures", "near_duplicates",
    "tokenize", "detokenize", "wordnet_synonyms", "cilin_synonyms", "synonym_replacement", "random_insertion",
    "random_swap", "random_deletion", "char_noise", "span_mask", "eda", "EN_STOPWORDS",
]

# ----------------------------------------------------------------------------------------------- checks

def _check_text(text, name: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}; for a batch use a list comprehension "
                        f"or datasets.map(batched=True)")
    return text


def _check_tokens(tokens) -> list[str]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or not all(isinstance(t, str) for t in tokens):
        raise TypeError(f"tokens must be a list of str (use tokenize(text, lang) first), got {type(tokens).__name__}")
    return list(tokens)


def _check_prob(p, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


def _rng(rng) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, int) and not isinstance(rng, bool):
        return random.Random(rng)
    raise TypeError(f"rng must be a random.Random or an int seed, got {type(rng).__name__}")


# ----------------------------------------------------------------------------------------------- cleaning

_TAG = re.compile(r"<\s*/?\s*[a-zA-Z][^<>]{0,200}?>")
_BR = re.compile(r"<\s*br\s*/?\s*>", re.I)
_URL = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"'，。！？]+", re.I)
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")
_NEWLINES = re.compile(r"\s*\n\s*")


def strip_markup(text: str) -> str:
    """Turn ``<br />`` into a space, drop other HTML tags and unescape entities (``&amp;`` -> ``&``)."""
    text = _BR.sub(" ", _check_text(text))
    return html.unescape(_TAG.sub(" ", text))


def remove_urls(text: str, repl: str = " ") -> str:
    """Replace http(s)/ftp/www URLs by ``repl``."""
    return _URL.sub(repl, _check_text(text))


def to_halfwidth(text: str) -> str:
    """Full-width ASCII forms (U+FF01-FF5E) and the ideographic space -> their half-width equivalents."""
    out = []
    for ch in _check_text(text):
        c = ord(ch)
        if 0xFF01 <= c <= 0xFF5E:
            out.append(chr(c - 0xFEE0))
        elif c == 0x3000:
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def normalize_unicode(text: str, form: str = "NFKC") -> str:
    """Unicode normalisation (NFKC folds compatibility forms: full-width letters, ligatures, circled digits)."""
    if form not in ("NFC", "NFD", "NFKC", "NFKD"):
        raise ValueError(f"form must be one of NFC, NFD, NFKC, NFKD, got {form!r}")
    return unicodedata.normalize(form, _check_text(text))


def normalize_whitespace(text: str, keep_newlines: bool = False) -> str:
    """Drop control/format characters (zero-width, BOM, ``\\x00``...), collapse runs of spaces, strip the ends."""
    text = _check_text(text).replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf")
                   or ch == "\u200d")  # keep the zero-width joiner: it glues emoji sequences
    text = _SPACES.sub(" ", text)
    text = _NEWLINES.sub("\n" if keep_newlines else " ", text)
    return text.strip()


def clean_text(text: str, lower: bool = False, halfwidth: bool = True) -> str:
    """The whole pipeline: markup, URLs, NFKC, full->half width, whitespace/control chars, optional lowercasing."""
    text = remove_urls(strip_markup(text))
    text = normalize_unicode(text)
    if halfwidth:
        text = to_halfwidth(text)
    text = normalize_whitespace(text)
    return text.lower() if lower else text


def length_ok(text: str, min_len: int = 1, max_len: int | None = None) -> bool:
    """True when ``min_len <= len(text) <= max_len`` (characters; ``max_len=None``: no upper bound)."""
    _check_text(text)
    if min_len < 0 or (max_len is not None and max_len < min_len):
        raise ValueError(f"need 0 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    return min_len <= len(text) and (max_len is None or len(text) <= max_len)


# ----------------------------------------------------------------------------------------------- de-duplication

def text_hash(text: str, normalize: bool = True) -> str:
    """SHA-1 of the text (after case folding and removing all whitespace when ``normalize``)."""
    _check_text(text)
    if normalize:
        text = re.sub(r"\s+", "", text.casefold())
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def dedup_exact(texts: Iterable[str], normalize: bool = True) -> list[int]:
    """Indices of the first occurrence of every distinct text (by ``text_hash``)."""
    seen, keep = set(), []
    for i, t in enumerate(texts):
        h = text_hash(t, normalize)
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return keep


def shingles(text: str, n: int = 5, unit: str = "char") -> set[str]:
    """The set of ``n``-grams of characters (``unit='char'``, good for Chinese) or words (``unit='word'``)."""
    _check_text(text)
    if n < 1:
        raise ValueError(f"shingle size n must be >= 1, got {n}")
    if unit == "char":
        seq = re.sub(r"\s+", " ", text.casefold()).strip()
        return {seq[i:i + n] for i in range(max(1, len(seq) - n + 1))} if seq else set()
    if unit == "word":
        seq = text.casefold().split()
        return {" ".join(seq[i:i + n]) for i in range(max(1, len(seq) - n + 1))} if seq else set()
    raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity |a & b| / |a | b| (1.0 for two empty sets)."""
    return 1.0 if not a and not b else len(a & b) / len(a | b)


_PRIME = (1 << 31) - 1  # a Mersenne prime; with a, x < 2^31 the products fit in 64 bits


def minhash_signatures(sets: Sequence[set[str]], num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """MinHash signatures, shape (len(sets), num_perm): per permutation h(x) = (a*x + b) mod p, keep the minimum.

    The share of equal columns of two rows estimates the Jaccard similarity of the two sets.
    """
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    gen = np.random.default_rng(seed)
    a = gen.integers(1, _PRIME, num_perm, dtype=np.uint64)
    b = gen.integers(0, _PRIME, num_perm, dtype=np.uint64)
    sig = np.full((len(sets), num_perm), _PRIME, dtype=np.uint64)  # an empty set keeps the sentinel p
    for i, s in enumerate(sets):
        if s:
            # a stable 32-bit hash of every shingle (Python's hash() changes between runs), reduced mod p
            x = np.array([int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=4).digest(), "little")
                          for t in s], dtype=np.uint64)[:, None] % np.uint64(_PRIME)
            sig[i] = ((a * x + b) % np.uint64(_PRIME)).min(axis=0)
    return sig


def near_duplicates(signatures: np.ndarray, threshold: float = 0.8, bands: int = 32) -> list[tuple[int, int, float]]:
    """Pairs (i, j, estimated Jaccard) with estimate >= threshold, found by LSH banding (no all-pairs loop)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    n, k = signatures.shape
    if k % bands:
        raise ValueError(f"bands ({bands}) must divide the signature length ({k})")
    rows = k // bands
    candidates = set()
    for band in range(bands):
        buckets = defaultdict(list)
        for i, key in enumerate(map(bytes, signatures[:, band * rows:(band + 1) * rows])):
            buckets[key].append(i)
        for ids in buckets.values():
            candidates.update((ids[x], ids[y]) for x in range(len(ids)) for y in range(x + 1, len(ids)))
    out = []
    for i, j in sorted(candidates):
        est = float((signatures[i] == signatures[j]).mean())
        if est >= threshold:
            out.append((i, j, est))
    return out


# ----------------------------------------------------------------------------------------------- tokens and synonyms

EN_STOPWORDS = frozenset(
    "a an the and or but if of at by for with about against between into through during before after above below "
    "to from up down in out on off over under again then once here there when where why how all any both each few "
    "more most other some such no nor not only own same so than too very s t can will just don should now i me my "
    "we our you your he him his she her it its they them their what which who whom this that these those am is are "
    "was were be been being have has had having do does did doing".split())
_EN_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+|[^\sA-Za-z\d]")


def tokenize(text: str, lang: str = "en") -> list[str]:
    """English: words, numbers and single symbols (emoji included); Chinese: ``jieba`` words (spaces dropped)."""
    _check_text(text)
    if lang == "en":
        return _EN_TOKEN.findall(text)
    if lang == "zh":
        import jieba
        jieba.setLogLevel(60)
        return [w for w in jieba.lcut(text) if w.strip()]
    raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")


def detokenize(tokens: Sequence[str], lang: str = "en") -> str:
    """Join tokens back: with spaces for English, with nothing for Chinese."""
    tokens = _check_tokens(tokens)
    if lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    return (" " if lang == "en" else "").join(tokens)


def wordnet_synonyms(wordnet) -> Callable[[str], list[str]]:
    """A lookup word -> WordNet synonyms (single words, not the word itself); pass ``helpers.data.load_wordnet()``."""
    cache: dict[str, list[str]] = {}

    def lookup(word: str) -> list[str]:
        w = word.lower()
        if w not in cache:
            names = {lem.name().lower() for syn in wordnet.synsets(w) for lem in syn.lemmas()}
            cache[w] = sorted(n for n in names if n != w and n.isalpha())
        return cache[w]
    return lookup


def cilin_synonyms(groups: dict[str, list[str]]) -> Callable[[str], list[str]]:
    """A lookup word -> HIT Cilin synonyms (same ``=`` group); pass ``helpers.data.load_cilin()``."""
    index: dict[str, set[str]] = defaultdict(set)
    for words in groups.values():
        for w in words:
            index[w].update(words)

    def lookup(word: str) -> list[str]:
        return sorted(index.get(word, set()) - {word})
    return lookup


def _candidates(tokens: list[str], stopwords: frozenset) -> list[int]:
    return [i for i, t in enumerate(tokens) if t.lower() not in stopwords and any(c.isalnum() for c in t)]


def _n_changes(alpha: float, n_tokens: int) -> int:
    return max(1, round(alpha * n_tokens)) if alpha > 0 and n_tokens else 0


def synonym_replacement(tokens: Sequence[str], alpha: float, rng, synonyms: Callable[[str], list[str]],
                        stopwords: frozenset = EN_STOPWORDS) -> list[str]:
    """EDA SR: replace about ``alpha * len(tokens)`` distinct non-stopwords by a random synonym."""
    tokens, alpha, rng = _check_tokens(tokens), _check_prob(alpha, "alpha"), _rng(rng)
    out, todo = list(tokens), _n_changes(alpha, len(tokens))
    idx = _candidates(out, stopwords)
    rng.shuffle(idx)
    for i in idx:
        if todo == 0:
            break
        syns = synonyms(out[i])
        if syns:
            out[i] = rng.choice(syns).replace("_", " ")
            todo -= 1
    return out


def random_insertion(tokens: Sequence[str], alpha: float, rng, synonyms: Callable[[str], list[str]],
                     stopwords: frozenset = EN_STOPWORDS) -> list[str]:
    """EDA RI: about ``alpha * len(tokens)`` times, insert a synonym of a random word at a random position."""
    tokens, alpha, rng = _check_tokens(tokens), _check_prob(alpha, "alpha"), _rng(rng)
    out = list(tokens)
    idx = _candidates(out, stopwords)
    for _ in range(_n_changes(alpha, len(tokens))):
        for _try in range(10):  # a few words may have no synonym
            if not idx:
                return out
            syns = synonyms(tokens[rng.choice(idx)])
            if syns:
                out.insert(rng.randint(0, len(out)), rng.choice(syns).replace("_", " "))
                break
    return out


def random_swap(tokens: Sequence[str], alpha: float, rng) -> list[str]:
    """EDA RS: swap two random positions, about ``alpha * len(tokens)`` times."""
    tokens, alpha, rng = _check_tokens(tokens), _check_prob(alpha, "alpha"), _rng(rng)
    out = list(tokens)
    if len(out) < 2:
        return out
    for _ in range(_n_changes(alpha, len(out))):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(tokens: Sequence[str], p: float, rng) -> list[str]:
    """EDA RD: drop each token with probability ``p`` (always keeps at least one token)."""
    tokens, p, rng = _check_tokens(tokens), _check_prob(p), _rng(rng)
    if len(tokens) <= 1:
        return list(tokens)
    out = [t for t in tokens if rng.random() >= p]
    return out or [rng.choice(tokens)]


def char_noise(text: str, p: float, rng, alphabet: str | None = None) -> str:
    """Typos: each character is, with probability ``p``, deleted, swapped with the next, replaced or doubled.

    Replacements come from ``alphabet`` (default: the characters of the text itself, so Chinese stays Chinese).
    """
    text, p, rng = _check_text(text), _check_prob(p), _rng(rng)
    pool = alphabet or "".join(sorted(set(c for c in text if not c.isspace()))) or " "
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if c.isspace() or rng.random() >= p:
            out.append(c)
        else:
            op = rng.choice(("delete", "swap", "replace", "insert"))
            if op == "swap" and i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 1
            elif op == "replace":
                out.append(rng.choice(pool))
            elif op == "insert":
                out += [c, rng.choice(pool)]
            elif op == "swap":
                out.append(c)
        i += 1
    return "".join(out)


def span_mask(tokens: Sequence[str], p: float, rng, span: int = 3, mask: str | None = "[MASK]") -> list[str]:
    """Token cutoff: hide spans of up to ``span`` tokens until about a share ``p`` is covered.

    ``mask=None`` drops the spans (cutoff); otherwise each hidden token becomes ``mask``.
    """
    tokens, p, rng = _check_tokens(tokens), _check_prob(p), _rng(rng)
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    n = len(tokens)
    target, hidden = round(p * n), set()
    while len(hidden) < target:
        length = rng.randint(1, span)
        start = rng.randrange(n)
        hidden.update(range(start, min(n, start + length)))
    if mask is None:
        return [t for i, t in enumerate(tokens) if i not in hidden]
    return [mask if i in hidden else t for i, t in enumerate(tokens)]


def eda(text: str, rng, synonyms: Callable[[str], list[str]], lang: str = "en", n_aug: int = 4,
        alpha_sr: float = 0.1, alpha_ri: float = 0.1, alpha_rs: float = 0.1, p_rd: float = 0.1,
        stopwords: frozenset = EN_STOPWORDS) -> list[str]:
    """Easy Data Augmentation (Wei & Zou, 2019): ``n_aug`` variants, each made by one of SR/RI/RS/RD in turn."""
    rng = _rng(rng)
    for name, v in (("alpha_sr", alpha_sr), ("alpha_ri", alpha_ri), ("alpha_rs", alpha_rs), ("p_rd", p_rd)):
        _check_prob(v, name)
    if not isinstance(n_aug, int) or n_aug < 0:
        raise ValueError(f"n_aug must be a non-negative int, got {n_aug!r}")
    tokens = tokenize(text, lang)
    ops = [lambda t: synonym_replacement(t, alpha_sr, rng, synonyms, stopwords),
           lambda t: random_insertion(t, alpha_ri, rng, synonyms, stopwords),
           lambda t: random_swap(t, alpha_rs, rng),
           lambda t: random_deletion(t, p_rd, rng)]
    return [detokenize(ops[k % 4](tokens), lang) for k in range(n_aug)]
