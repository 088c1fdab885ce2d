import random

import numpy as np
import pytest

from helpers import text as T

SYN = {"good": ["fine", "decent"], "movie": ["film"], "好": ["良好"], "酒店": ["旅馆"]}.get


def syn(word):
    return SYN(word, [])


def test_cleaning_steps():
    raw = "Great film!<br /><br />See http://x.com/a?b=1 or www.y.org ＡＢＣ１２３，好！\u200b\x00  done &amp; more\r\n"
    out = T.clean_text(raw)
    assert out == "Great film! See or ABC123,好! done & more"
    assert T.strip_markup("a<br/>b<i>c</i>") == "a b c "
    assert T.to_halfwidth("ＡＢＣ　１２３！") == "ABC 123!"
    assert T.normalize_unicode("ﬁ①") == "fi1"
    assert T.normalize_whitespace(" a \t b\n\n c ", keep_newlines=True) == "a b\nc"
    assert T.clean_text("ABC", lower=True) == "abc"


def test_empty_strings():
    for f in (T.strip_markup, T.remove_urls, T.to_halfwidth, T.normalize_unicode, T.normalize_whitespace, T.clean_text):
        assert f("") == ""
    assert T.shingles("") == set() and T.tokenize("") == [] and T.tokenize("", "zh") == []
    assert not T.length_ok("") and T.length_ok("", min_len=0)
    assert T.char_noise("", 0.5, 0) == "" and T.span_mask([], 0.5, 0) == []
    assert T.random_deletion([], 0.5, 0) == [] and T.random_swap([], 0.5, 0) == []
    assert T.synonym_replacement([], 0.5, 0, syn) == [] and T.random_insertion([], 0.5, 0, syn) == []
    assert T.eda("", 0, syn, n_aug=2) == ["", ""]
    sig = T.minhash_signatures([set(), set()], 16)
    assert sig.shape == (2, 16)


def test_mixed_scripts_and_emoji():
    s = "The movie 很好看 😀👍🏽 ｗｏｗ！ café"
    out = T.clean_text(s)
    assert "😀" in out and "👍🏽" in out and "很好看" in out and "wow!" in out and "café" in out
    assert "😀" in T.tokenize(s, "en") and "😀" in T.tokenize(s, "zh")
    assert T.detokenize(T.tokenize("好酒店😀", "zh"), "zh") == "好酒店😀"
    for seed in range(5):
        noisy = T.char_noise(s, 0.3, seed)
        assert isinstance(noisy, str)
        assert set(noisy) <= set(s) | set(" ")  # replacements come from the text's own characters
    aug = T.eda(s, 1, syn, n_aug=4)
    assert len(aug) == 4 and all(isinstance(a, str) for a in aug)
    assert T.synonym_replacement(["the", "movie", "😀"], 1.0, 0, syn) == ["the", "film", "😀"]


def test_non_string_input_raises_type_error():
    for f in (T.strip_markup, T.remove_urls, T.to_halfwidth, T.normalize_unicode, T.normalize_whitespace,
              T.clean_text, T.text_hash, T.tokenize, T.shingles, T.length_ok):
        with pytest.raises(TypeError, match="must be a str"):
            f(None)
        with pytest.raises(TypeError, match="must be a str"):
            f(["a list"])
    with pytest.raises(TypeError, match="must be a str"):
        T.char_noise(b"bytes", 0.1, 0)
    with pytest.raises(TypeError, match="list of str"):
        T.random_swap("a string, not tokens", 0.1, 0)
    with pytest.raises(TypeError, match="list of str"):
        T.random_deletion([1, 2], 0.1, 0)
    with pytest.raises(TypeError, match="rng"):
        T.random_swap(["a", "b"], 0.1, rng=None)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("inf")])
def test_probability_outside_unit_interval_raises_value_error(p):
    toks = ["a", "good", "movie"]
    for call in (lambda: T.random_deletion(toks, p, 0), lambda: T.random_swap(toks, p, 0),
                 lambda: T.synonym_replacement(toks, p, 0, syn), lambda: T.random_insertion(toks, p, 0, syn),
                 lambda: T.char_noise("abc", p, 0), lambda: T.span_mask(toks, p, 0),
                 lambda: T.eda("a good movie", 0, syn, p_rd=p)):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            call()
    with pytest.raises(TypeError, match="number"):
        T.random_swap(toks, "0.1", 0)


def test_augmentation_is_seeded_and_sane():
    toks = T.tokenize("this good movie was a good movie to watch on a rainy day")
    for f in (lambda r: T.random_swap(toks, 0.3, r), lambda r: T.random_deletion(toks, 0.3, r),
              lambda r: T.span_mask(toks, 0.3, r), lambda r: T.synonym_replacement(toks, 0.3, r, syn),
              lambda r: T.random_insertion(toks, 0.3, r, syn)):
        assert f(7) == f(random.Random(7))
    assert sorted(T.random_swap(toks, 0.5, 0)) == sorted(toks)
    assert len(T.random_insertion(toks, 0.2, 0, syn)) == len(toks) + round(0.2 * len(toks))
    assert len(T.random_deletion(toks, 1.0, 0)) == 1  # never empty
    assert T.random_deletion(toks, 0.0, 0) == toks and T.char_noise("abc def", 0.0, 0) == "abc def"
    assert T.span_mask(toks, 0.5, 0).count("[MASK]") >= len(toks) // 2
    assert len(T.span_mask(toks, 0.5, 0, mask=None)) <= len(toks) - len(toks) // 2
    zh = T.synonym_replacement(T.tokenize("这家酒店很好", "zh"), 1.0, 0, syn, stopwords=frozenset())
    assert "旅馆" in zh and "良好" in zh


def test_dedup_and_minhash():
    texts = ["Hello  world", "hello world", "Something else", "HELLO WORLD "]
    assert T.dedup_exact(texts) == [0, 2]
    assert T.dedup_exact(texts, normalize=False) == [0, 1, 2, 3]
    a = T.shingles("the quick brown fox jumps over the lazy dog and runs away")
    b = T.shingles("the quick brown fox jumped over the lazy dog and runs away")
    c = T.shingles("an entirely different sentence about hotels in beijing")
    sig = T.minhash_signatures([a, b, c], num_perm=256)
    assert abs((sig[0] == sig[1]).mean() - T.jaccard(a, b)) < 0.1
    pairs = T.near_duplicates(sig, threshold=0.5, bands=64)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    np.testing.assert_array_equal(sig, T.minhash_signatures([a, b, c], num_perm=256))  # stable across calls
    with pytest.raises(ValueError, match="divide"):
        T.near_duplicates(sig, 0.5, bands=7)
    with pytest.raises(ValueError, match="unit"):
        T.shingles("abc", unit="line")
    with pytest.raises(ValueError, match="lang"):
        T.tokenize("abc", "fr")
