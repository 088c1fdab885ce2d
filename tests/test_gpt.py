import pytest
import torch

from helpers.gpt import (
    GPT,
    CharTokenizer,
    KVCache,
    eval_loss,
    filter_logits,
    from_hf,
    generate,
    random_batches,
    sliding_window_nll,
    to_hf,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=16).eval()


@pytest.fixture(scope="module")
def hf(model):
    return to_hf(model)


def test_matches_transformers(model, hf):
    x = torch.randint(0, 50, (2, 12))
    am = torch.ones(2, 12, dtype=torch.long)
    am[1, 8:] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits)
        torch.testing.assert_close(model(x, attention_mask=am)[1, :8], hf(x, attention_mask=am).logits[1, :8])
        torch.testing.assert_close(from_hf(hf)(x), model(x))


def test_cache_equals_full(model):
    x = torch.randint(0, 50, (2, 10))
    cache = KVCache()
    with torch.no_grad():
        parts = [model(x[:, :6], cache=cache), model(x[:, 6:8], cache=cache), model(x[:, 8:], cache=cache)]
        torch.testing.assert_close(torch.cat(parts, 1), model(x))
    assert len(cache) == 10


def test_generate_matches_hf(model, hf):
    p = torch.randint(0, 50, (2, 4))
    for beams in (1, 3):
        ours = generate(model, p, 12, num_beams=beams)
        ref = hf.generate(p, max_new_tokens=12, do_sample=False, num_beams=beams, pad_token_id=0)
        assert torch.equal(ours, ref)
        assert torch.equal(generate(model, p, 12, num_beams=beams, use_cache=False), ours)


def test_generate_past_context_and_sampling(model):
    g = torch.Generator().manual_seed(0)
    out = generate(model, torch.zeros(1, 30, dtype=torch.long), 10, do_sample=True, top_k=5, top_p=0.9, generator=g)
    assert out.shape == (1, 40)
    assert torch.equal(generate(model, torch.zeros(1, 30, dtype=torch.long), 10),
                       generate(model, torch.zeros(1, 30, dtype=torch.long), 10, use_cache=False))


@pytest.mark.parametrize("kw, msg", [
    (dict(temperature=-0.5), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(num_beams=0), "num_beams"), (dict(top_k=0), "top_k"), (dict(num_beams=2, do_sample=True), "beam"),
])
def test_bad_generation_arguments(model, kw, msg):
    with pytest.raises(ValueError, match=msg):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 5, **kw)


def test_prompt_longer_than_context(model):
    with pytest.raises(ValueError, match="block_size"):
        generate(model, torch.zeros(1, 33, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="integer tensor"):
        generate(model, torch.zeros(1, 3), 5)
    with pytest.raises(ValueError, match="exceed"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_filter_logits():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    p = logits.softmax(-1)[0]  # ~0.64, 0.24, 0.09, 0.03
    kept = ~torch.isinf(filter_logits(logits, top_p=float(p[0] + 0.01)))
    assert kept.tolist() == [[True, True, False, False]]
    torch.testing.assert_close(filter_logits(logits, temperature=2.0), logits / 2)


def test_sliding_window_and_eval(model):
    ids = torch.randint(0, 50, (100,))
    nll, n = sliding_window_nll(model, ids, window=32, stride=32)
    assert n == 99
    nll2, n2 = sliding_window_nll(model, ids, window=32, stride=8)
    assert n2 == 99 and nll2 != nll
    with pytest.raises(ValueError, match="stride"):
        sliding_window_nll(model, ids, window=64, stride=8)
    x, y = next(random_batches(ids, 16, 4, torch.Generator().manual_seed(0)))
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert 2.0 < eval_loss(model, ids, 16) < 6.0


def test_char_tokenizer():
    tok = CharTokenizer("hello world")
    assert tok.decode(tok.encode("hold")) == "hold"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("xyz")
