import copy

import pytest
import torch
import torch.nn.functional as F

from helpers.gpt import (
    GPT,
    CharTokenizer,
    GPTConfig,
    KVCache,
    eval_loss,
    filter_logits,
    from_hf,
    generate,
    lm_loss,
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
    with torch.no_grad():  # each sampled token is inside the top-k / top-p set of its context (last 32 tokens)
        for t in range(30, 40):
            allowed = filter_logits(model(out[:, :t][:, -32:])[:, -1], top_k=5, top_p=0.9).isfinite()[0]
            assert allowed[out[0, t]] and 1 <= allowed.sum() <= 5
    out = generate(model, torch.zeros(4, 3, dtype=torch.long), 6, do_sample=True, top_k=1, generator=g)
    assert torch.equal(out, generate(model, torch.zeros(4, 3, dtype=torch.long), 6))  # top-1 sampling is greedy
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
    torch.testing.assert_close(filter_logits(logits, top_k=10, top_p=1.0), logits)


@pytest.mark.parametrize("kw, msg", [
    (dict(temperature=0), "temperature must be a number > 0"), (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(top_k=0), "top_k must be None or an int >= 1"),
    (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"), (dict(top_p=0.0), r"top_p must be None or in \(0, 1\]"),
    (dict(top_p=1.01), "top_p"), (dict(top_p=-0.5), "top_p"),
])
def test_filter_logits_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        filter_logits(torch.zeros(1, 4), **kw)


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
    # eval_loss == lm_loss on the same 6 windows of 16 (+ shifted targets), and the sliding-window total over them
    windows = ids[:96].view(6, 16), ids[1:97].view(6, 16)
    want = lm_loss(model, windows).item()
    assert eval_loss(model, ids, 16) == pytest.approx(want, rel=1e-5)
    assert eval_loss(model, ids, 16, batch_size=4) == pytest.approx(want, rel=1e-5)
    assert eval_loss(model, ids, 16, batch_size=4, max_batches=1) == pytest.approx(
        lm_loss(model, (windows[0][:4], windows[1][:4])).item(), rel=1e-5)
    nll3, n3 = sliding_window_nll(model, ids[:97], window=16, stride=16)
    assert n3 == 96 and nll3 / n3 == pytest.approx(want, rel=1e-5)
    with torch.no_grad():  # window 32, stride 8, 41 tokens: targets 1..32 from ids[0:32], 33..40 from ids[8:40]
        first = model(ids[None, :32])[0].log_softmax(-1).gather(-1, ids[1:33, None]).sum()
        second = model(ids[None, 8:40])[0, 24:].log_softmax(-1).gather(-1, ids[33:41, None]).sum()
    nll4, n4 = sliding_window_nll(model, ids[:41], window=32, stride=8)
    assert n4 == 40 and nll4 == pytest.approx(-(first + second).item(), rel=1e-5)


def test_char_tokenizer():
    tok = CharTokenizer("hello world")
    assert tok.decode(tok.encode("hold")) == "hold"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("xyz")


def test_inputs_embeds_matches_transformers(model, hf):
    """inputs_embeds replaces wte(idx), position embeddings are still added: as GPT2LMHeadModel(inputs_embeds=)."""
    torch.manual_seed(1)
    x = torch.randint(0, 50, (2, 9))
    prompt = torch.randn(2, 3, 16) * 0.1  # e.g. learned soft-prompt vectors in front of the tokens
    emb = torch.cat([prompt, model.wte(x)], dim=1).detach()
    am = torch.ones(2, 12, dtype=torch.long)
    am[1, 9:] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=model.wte(x)), model(x))
        torch.testing.assert_close(model(inputs_embeds=emb), hf(inputs_embeds=emb).logits)
        torch.testing.assert_close(model(inputs_embeds=emb, attention_mask=am)[1, :9],
                                   hf(inputs_embeds=emb, attention_mask=am).logits[1, :9])
        torch.testing.assert_close(model(inputs_embeds=emb, attention_mask=am)[1, :9],
                                   model(inputs_embeds=emb[1:, :9])[0])
    emb.requires_grad_(True)  # gradients reach the embeddings (soft prompts, adversarial perturbations)
    model(inputs_embeds=emb).sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    model.zero_grad()


def test_hidden_states_match_transformers(model, hf):
    x = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        logits, hidden = model(x, output_hidden_states=True)
        ref = hf(x, output_hidden_states=True)
    assert len(hidden) == len(ref.hidden_states) == model.config.n_layer + 1
    for ours, theirs in zip(hidden, ref.hidden_states):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(logits, model(x))
    cache = KVCache()
    with torch.no_grad():  # with a cache: the states of the new tokens
        model(x[:, :6], cache=cache)
        _, cached = model(x[:, 6:], cache=cache, output_hidden_states=True)
    for ours, full in zip(cached, hidden):
        torch.testing.assert_close(ours, full[:, 6:])


def test_head_mask_equals_pruned_heads(model):
    torch.manual_seed(0)
    x = torch.randint(0, 50, (2, 10))
    hm = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # (n_layer, n_head): remove head 1 of layer 0
    pruned = copy.deepcopy(model)
    pruned.blocks[0].self_attn.prune_heads([1])
    with torch.no_grad():
        masked = model(x, head_mask=hm)
        torch.testing.assert_close(pruned(x), masked)
        torch.testing.assert_close(pruned(x, head_mask=[torch.ones(1), torch.tensor([0.0, 1.0])]),
                                   model(x, head_mask=torch.tensor([[1.0, 0.0], [0.0, 1.0]])))
        torch.testing.assert_close(model(x, head_mask=torch.ones(2)), model(x))  # (n_head,): every layer
        cache = KVCache()
        steps = [model(x[:, :7], cache=cache, head_mask=hm), model(x[:, 7:], cache=cache, head_mask=hm)]
        torch.testing.assert_close(torch.cat(steps, 1), masked)
    assert not torch.allclose(masked, model(x))
    with pytest.raises(ValueError, match="n_layers=2"):
        model(x, head_mask=torch.ones(3, 2))


def test_gpt_bad_inputs(model):
    with pytest.raises(ValueError, match="either a GPTConfig or sizes"):
        GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8), n_layer=2)
    x = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one of idx"):
        model(x, inputs_embeds=model.wte(x))
    with pytest.raises(ValueError, match="exactly one of idx"):
        model()
    with pytest.raises(ValueError, match=r"inputs_embeds must be a float tensor \(batch, seq_len, n_embd=16\)"):
        model(inputs_embeds=torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match=r"position_ids must be in \[0, block_size=32\)"):
        model(x, position_ids=torch.tensor([[30, 31, 32, 33]]))
    with pytest.raises(ValueError, match="position_ids must be integers"):
        model(x, position_ids=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, cached \+ new\) = \(1, 4\)"):
        model(inputs_embeds=model.wte(x), attention_mask=torch.ones(1, 5))


def test_kv_cache_reorder(model):
    cache = KVCache()
    with torch.no_grad():
        model(torch.arange(12).view(3, 4), cache=cache)
    k0 = cache.layers[0][0]
    cache.reorder(torch.tensor([2, 2, 0]))
    assert torch.equal(cache.layers[0][0], k0[[2, 2, 0]])
    with pytest.raises(ValueError, match=r"index values must be in \[0, batch=3\)"):
        cache.reorder(torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match=r"index values must be in \[0, batch=3\)"):
        cache.reorder(torch.tensor([-1, 0, 1]))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        cache.reorder(torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        cache.reorder([0, 1, 2])


def test_evaluation_and_data_bad_inputs(model):
    with pytest.raises(ValueError, match="longer than block_size=16"):
        eval_loss(model, torch.arange(16), 16)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        eval_loss(model, torch.arange(40), 16, batch_size=0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        sliding_window_nll(model, torch.tensor([3]), window=8, stride=8)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        random_batches(torch.arange(40), 16, 0)  # raised at the call, not at the first next()
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        random_batches(torch.arange(40), -1, 4)
    with pytest.raises(ValueError, match="longer than block_size=40"):
        random_batches(torch.arange(40), 40, 4)


def test_char_tokenizer_bad_inputs():
    with pytest.raises(ValueError, match="non-empty str"):
        CharTokenizer("")
    tok = CharTokenizer("abc")
    assert tok.decode(torch.tensor([2, 0])) == "ca"
    with pytest.raises(ValueError, match=r"ints in \[0, vocab_size=3\).*\[-1\]"):
        tok.decode([0, -1])
    with pytest.raises(ValueError, match=r"vocab_size=3"):
        tok.decode([3])


def test_lm_loss_matches_cross_entropy(model):
    x, y = torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(lm_loss(model, (x, y)), F.cross_entropy(model(x).reshape(-1, 50), y.reshape(-1)))


def test_generation_names_reexported_from_helpers_gpt():
    import helpers.generate
    import helpers.gpt
    for name in helpers.generate.__all__:
        assert getattr(helpers.gpt, name) is getattr(helpers.generate, name) and name in helpers.gpt.__all__
