"""Fast tests of helpers.bert: fidelity to transformers, weight loading, masking, and the errors on bad input."""
import copy

import pytest
import torch

from helpers.bert import (
    Bert,
    BertClassifier,
    BertConfig,
    BertForMLM,
    hf_config,
    load_hf_state_dict,
    mask_tokens,
    mean_pool,
    read_config,
    to_hf,
)

TINY = dict(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=12)


def _batch():
    torch.manual_seed(0)
    ids = torch.randint(1, 50, (3, 8))
    am = torch.ones_like(ids)
    am[1, 5:], am[2, 2:] = 0, 0
    return ids.masked_fill(am == 0, 0), am


def test_to_hf_matches_transformers_on_padded_batch():
    torch.manual_seed(0)
    model = Bert(BertConfig(**TINY)).eval()
    hf = to_hf(model)
    ids, am = _batch()
    with torch.no_grad():
        h, ref = model(ids, am), hf(input_ids=ids, attention_mask=am)
    torch.testing.assert_close(h, ref.last_hidden_state)
    torch.testing.assert_close(model.pool(h), ref.pooler_output)


def test_load_hf_state_dict_roundtrip_with_bert_prefix():
    from transformers import BertModel
    torch.manual_seed(1)
    hf = BertModel(hf_config(BertConfig(**TINY))).eval()
    sd = {"bert." + k: v for k, v in hf.state_dict().items()}
    model = load_hf_state_dict(Bert(BertConfig(**TINY)), sd).eval()
    ids, am = _batch()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, am), hf(input_ids=ids, attention_mask=am).last_hidden_state)


def test_checkpoint_shape_mismatch_names_the_key():
    sd = to_hf(Bert(BertConfig(**TINY))).state_dict()
    with pytest.raises(ValueError, match=r"embeddings\.word_embeddings\.weight.*\(50, 16\).*\(50, 32\)"):
        load_hf_state_dict(Bert(BertConfig(**{**TINY, "hidden_size": 32, "intermediate_size": 64})), sd)
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\."):
        load_hf_state_dict(Bert(BertConfig(**{**TINY, "num_layers": 1})), sd)
    with pytest.raises(ValueError, match=r"lacks .*encoder\.layer\.2\."):
        load_hf_state_dict(Bert(BertConfig(**{**TINY, "num_layers": 3})), sd)


def test_too_long_input_raises():
    model = Bert(BertConfig(**TINY))
    with pytest.raises(ValueError, match="13 tokens.*max_positions=12"):
        model(torch.ones(1, 13, dtype=torch.long))


def test_attention_mask_shape_mismatch_raises():
    model = Bert(BertConfig(**TINY))
    ids, am = _batch()
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 5\).*input_ids has shape \(3, 8\)"):
        model(ids, am[:, :5])
    with pytest.raises(ValueError, match="vocab_size=50"):
        model(torch.full((1, 3), 50))


def test_padding_does_not_change_real_tokens():
    model = Bert(BertConfig(**TINY)).eval()
    ids, am = _batch()
    with torch.no_grad():
        torch.testing.assert_close(model(ids[2:3, :2]), model(ids, am)[2:3, :2])


def test_mlm_head_masked_positions_equal_full_projection():
    torch.manual_seed(0)
    model = BertForMLM(BertConfig(**TINY)).eval()
    ids, _ = _batch()
    inp, lab = mask_tokens(ids, 4, 50, special_ids=[0], prob=0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sel, loss = model(inp, labels=lab)
        full, loss_full = model(inp, labels=lab, full=True)
    torch.testing.assert_close(sel, full[lab != -100])
    torch.testing.assert_close(loss, loss_full)
    assert model.head.word.weight is model.bert.embeddings.word.weight  # tied decoder


def test_mask_tokens_statistics_and_specials():
    ids = torch.randint(5, 1000, (400, 250))
    ids[:, 0] = 2
    inp, lab = mask_tokens(ids, mask_token_id=4, vocab_size=1000, special_ids=[2], generator=torch.Generator().manual_seed(0))
    sel = lab != -100
    assert not sel[:, 0].any()
    assert torch.equal(lab[sel], ids[sel])
    assert torch.equal(inp[~sel], ids[~sel])
    assert abs(sel[:, 1:].float().mean().item() - 0.15) < 0.003
    assert abs((inp[sel] == 4).float().mean().item() - 0.80) < 0.01
    assert abs((inp[sel] == ids[sel]).float().mean().item() - 0.10) < 0.01
    with pytest.raises(ValueError, match="prob"):
        mask_tokens(ids, 4, 1000, prob=1.5)
    with pytest.raises(ValueError, match="mask_token_id"):
        mask_tokens(ids, 1000, 1000)


def test_classifier_and_mean_pool():
    model = BertClassifier(Bert(BertConfig(**TINY)), num_labels=3)
    ids, am = _batch()
    assert model(ids, am).shape == (3, 3)
    h = torch.randn(2, 4, 5)
    m = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(mean_pool(h, m)[0], h[0, :2].mean(0))
    with pytest.raises(ValueError, match="pooling"):
        BertClassifier(Bert(BertConfig(**TINY)), pooling="max")


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="num_layers"):
        BertConfig(num_layers=0)
    with pytest.raises(ValueError, match="divisible"):
        Bert(BertConfig(**{**TINY, "num_heads": 3}))
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_config(tmp_path)


def test_read_minilm_config():
    from helpers.data import minilm_path
    cfg = read_config(minilm_path(check=False))
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.vocab_size) == (6, 384, 12, 30522)


def test_inputs_embeds_and_hidden_states_match_transformers():
    """inputs_embeds replaces the word embeddings (positions, segments, LayerNorm still apply), as in BertModel."""
    torch.manual_seed(0)
    model = Bert(BertConfig(**TINY)).eval()
    hf = to_hf(model)
    ids, am = _batch()
    tt = torch.zeros_like(ids)
    tt[:, 4:] = 1
    emb = model.embeddings.word(ids).detach() + 0.1 * torch.randn(3, 8, 16)  # e.g. an adversarial perturbation
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=model.embeddings.word(ids), attention_mask=am), model(ids, am))
        h, hidden = model(attention_mask=am, token_type_ids=tt, inputs_embeds=emb, output_hidden_states=True)
        ref = hf(inputs_embeds=emb, attention_mask=am, token_type_ids=tt, output_hidden_states=True)
    torch.testing.assert_close(h, ref.last_hidden_state)
    assert len(hidden) == len(ref.hidden_states) == TINY["num_layers"] + 1
    for ours, theirs in zip(hidden, ref.hidden_states):
        torch.testing.assert_close(ours, theirs)
    assert hidden[-1] is h


def test_soft_prompt_with_longer_attention_mask():
    """P soft-prompt vectors in front of the word embeddings: the caller passes a mask longer by P; padding still
    leaves the real tokens unchanged, and the result equals transformers given the same embeddings and mask."""
    torch.manual_seed(0)
    model = Bert(BertConfig(**TINY)).eval()
    hf = to_hf(model)
    ids, am = _batch()
    prompt = torch.nn.Parameter(torch.randn(4, 16) * 0.02)
    emb = torch.cat([prompt.expand(3, 4, 16), model.embeddings.word(ids)], dim=1)  # (3, 4 + 8, 16)
    am_long = torch.cat([torch.ones(3, 4, dtype=am.dtype), am], dim=1)
    h = model(inputs_embeds=emb, attention_mask=am_long)
    with torch.no_grad():
        torch.testing.assert_close(h, hf(inputs_embeds=emb, attention_mask=am_long).last_hidden_state)
        torch.testing.assert_close(h[2, :6], model(inputs_embeds=emb[2:, :6])[0])  # row 2: 4 prompt + 2 tokens
    clf = BertClassifier(model, num_labels=2)
    clf(inputs_embeds=emb, attention_mask=am_long).sum().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0  # the prompt is trainable through the encoder
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 8\) but inputs_embeds has \(batch, seq_len\) "
                                         r"\(3, 12\)"):
        model(inputs_embeds=emb, attention_mask=am)


def test_head_mask_equals_pruned_heads():
    torch.manual_seed(0)
    model = Bert(BertConfig(**{**TINY, "num_heads": 4})).eval()
    ids, am = _batch()
    hm = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])  # (num_layers, num_heads)
    pruned = copy.deepcopy(model)
    pruned.prune_heads({0: [1, 3], 1: [3]})
    assert [b.self_attn.n_heads for b in pruned.blocks] == [2, 3]
    with torch.no_grad():
        masked, hidden = model(ids, am, head_mask=hm, output_hidden_states=True)
        out, phidden = pruned(ids, am, output_hidden_states=True)
        torch.testing.assert_close(out, masked)
        for a, b in zip(phidden, hidden):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(pruned(ids, am, head_mask=[torch.tensor([1.0, 0.0]), None]),
                                   model(ids, am, head_mask=torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])))
    assert not torch.allclose(masked, model(ids, am))
    with pytest.raises(ValueError, match=r"layer indices \[2\] are out of range"):
        pruned.prune_heads({2: [0]})
    with pytest.raises(ValueError, match="cannot prune all 2 heads"):
        pruned.prune_heads({0: [0, 1]})
    with pytest.raises(TypeError, match="dict"):
        pruned.prune_heads([0, 1])


def test_bert_bad_inputs():
    model = Bert(BertConfig(**TINY))
    ids, am = _batch()
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(ids, inputs_embeds=model.embeddings.word(ids))
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(attention_mask=am)
    with pytest.raises(ValueError, match=r"hidden_size=16"):
        model(inputs_embeds=torch.zeros(3, 8, 12))
    with pytest.raises(ValueError, match="13 tokens.*max_positions=12"):
        model(inputs_embeds=torch.zeros(1, 13, 16))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\).*\(batch, seq_len, hidden\) = "
                                         r"\(2, 5, 3\)"):
        mean_pool(torch.randn(2, 5, 3), torch.ones(2, 4))
    mlm = BertForMLM(BertConfig(**TINY))
    with pytest.raises(ValueError, match="every label is -100"):
        mlm(ids, labels=torch.full_like(ids, -100))
    with pytest.raises(ValueError, match=r"labels has shape \(3, 7\)"):
        mlm(ids, labels=torch.full((3, 7), -100))


def test_mlm_with_inputs_embeds():
    torch.manual_seed(0)
    model = BertForMLM(BertConfig(**TINY)).eval()
    ids, am = _batch()
    lab = torch.full_like(ids, -100)
    lab[:, 1] = ids[:, 1]
    with torch.no_grad():
        a = model(ids, am, labels=lab)
        b = model(attention_mask=am, labels=lab, inputs_embeds=model.bert.embeddings.word(ids))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
