"""Fast tests of helpers.bert: fidelity to transformers, weight loading, masking, and the errors on bad input."""
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
