"""Fast tests of helpers.peft (LoRA, adapters, soft prompts, P-tuning, saving the trained parameters) against peft,
and of helpers.data.length_batches."""
import pytest
import torch
from torch import nn

from helpers.bert import Bert, BertClassifier, BertConfig
from helpers.data import length_batches
from helpers.peft import (
    Adapter,
    LoRALinear,
    PromptClassifier,
    PromptEncoder,
    SoftPrompt,
    add_adapters,
    add_lora,
    load_trainable,
    merge_lora,
    save_trainable,
    to_hf_classifier,
    trainable_only,
)

TINY = dict(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=12)


def _clf(seed=0):
    torch.manual_seed(seed)
    return BertClassifier(Bert(BertConfig(**TINY)), num_labels=2).eval()


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(1, 50, (3, 6))
    am = torch.ones_like(ids)
    am[1, 4:] = 0
    return ids.masked_fill(am == 0, 0), am


def test_lora_starts_as_identity_and_merges():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    x = torch.randn(5, 8)
    lora = LoRALinear(lin, r=2, alpha=4)
    torch.testing.assert_close(lora(x), lin(x))
    nn.init.normal_(lora.lora_B)
    torch.testing.assert_close(lora(x), lin(x) + 2.0 * x @ lora.lora_A.T @ lora.lora_B.T)
    torch.testing.assert_close(lora.merged()(x), lora(x))
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]


def test_lora_bad_arguments():
    with pytest.raises(ValueError, match="r must be a positive int"):
        LoRALinear(nn.Linear(4, 4), r=0)
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        LoRALinear(nn.Conv1d(4, 4, 1), r=2)
    with pytest.raises(ValueError, match="no module named"):
        add_lora(_clf(), r=2, targets=["query"])
    with pytest.raises(ValueError, match="r must be a positive int"):
        add_lora(_clf(), r=-1)
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        add_lora(_clf(), r=2, targets=["norm"])  # a LayerNorm


def test_lora_equals_peft_and_merge():
    peft = pytest.importorskip("peft")
    clf = _clf()
    hf = to_hf_classifier(clf)
    ids, am = _batch()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=am).logits, clf(ids, am))
    add_lora(clf, r=2, alpha=4, targets=("q_proj", "v_proj"))
    trainable_only(clf, lambda n: "lora_" in n or n.startswith("head."))
    pm = peft.get_peft_model(hf, peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                 target_modules=["query", "value"]))
    assert sum(p.numel() for p in clf.parameters() if p.requires_grad) == pm.get_nb_trainable_parameters()[0]
    for i, blk in enumerate(clf.bert.blocks):
        for ours, theirs in (("q_proj", "query"), ("v_proj", "value")):
            src, dst = getattr(blk.self_attn, ours), getattr(pm.base_model.model.bert.encoder.layer[i].attention.self,
                                                             theirs)
            nn.init.normal_(src.lora_B)
            dst.lora_A["default"].weight.data.copy_(src.lora_A.data)
            dst.lora_B["default"].weight.data.copy_(src.lora_B.data)
    pm.eval()
    with torch.no_grad():
        ours = clf(ids, am)
        torch.testing.assert_close(pm(input_ids=ids, attention_mask=am).logits, ours)
        assert merge_lora(clf) == 4
        torch.testing.assert_close(clf(ids, am), ours, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, LoRALinear) for m in clf.modules())


def test_adapter_identity_and_errors():
    clf = _clf()
    ids, am = _batch()
    with torch.no_grad():
        before = clf(ids, am)
        names = add_adapters(clf, bottleneck=4)
        torch.testing.assert_close(clf(ids, am), before)
    assert len(names) == 4 and isinstance(clf.bert.blocks[0].ff.fc2[1], Adapter)
    with pytest.raises(ValueError, match="bottleneck must be a positive int"):
        add_adapters(_clf(), bottleneck=0)
    with pytest.raises(ValueError, match="no module named"):
        add_adapters(_clf(), targets=["dense"])


def test_soft_prompt_equals_peft_prompt_tuning_and_errors():
    peft = pytest.importorskip("peft")
    clf = _clf()
    hf = to_hf_classifier(clf)
    torch.manual_seed(3)
    model = PromptClassifier(clf, SoftPrompt(3, 16, init=torch.randn(3, 16))).eval()
    pm = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3)).eval()
    pm.prompt_encoder["default"].embedding.weight.data.copy_(model.prompt.weight.data)
    ids, am = _batch()
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=ids, attention_mask=am).logits, model(ids, am))
    with pytest.raises(ValueError, match="num_virtual_tokens must be a positive int"):
        SoftPrompt(0, 16)
    with pytest.raises(ValueError, match="maximum length 12"):
        model(torch.ones(1, 10, dtype=torch.long))  # 3 + 10 > 12 positions


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_prompt_encoder_equals_peft_and_exports(kind):
    peft = pytest.importorskip("peft")
    clf = _clf()
    hf = to_hf_classifier(clf)
    torch.manual_seed(0)
    enc = PromptEncoder(3, 16, encoder_hidden_size=8, kind=kind)
    model = PromptClassifier(clf, enc).eval()
    cfg = peft.PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=3, encoder_hidden_size=8,
                                   encoder_reparameterization_type=kind.upper(), encoder_dropout=0.0)
    pm = peft.get_peft_model(hf, cfg).eval()
    pm.prompt_encoder["default"].load_state_dict(enc.state_dict())
    ids, am = _batch()
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=ids, attention_mask=am).logits, model(ids, am))
        exported = PromptClassifier(clf, enc.export()).eval()
        torch.testing.assert_close(exported(ids, am), model(ids, am))
    with pytest.raises(ValueError, match="kind must be"):
        PromptEncoder(3, 16, kind="gru")
    with pytest.raises(ValueError, match="num_virtual_tokens must be a positive int"):
        PromptEncoder(-2, 16)


def test_save_and_load_trainable(tmp_path):
    clf = _clf()
    add_lora(clf, r=2, alpha=4)
    n = trainable_only(clf, lambda name: "lora_" in name or name.startswith("head."))
    for blk in clf.bert.blocks:
        nn.init.normal_(blk.self_attn.q_proj.lora_B)
    path = save_trainable(clf, tmp_path / "lora.safetensors")
    fresh = _clf()  # the same base weights; a different head and LoRA A, which the file overwrites
    nn.init.normal_(fresh.head.weight)
    add_lora(fresh, r=2, alpha=4)
    load_trainable(fresh, path)
    ids, am = _batch()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids, am), clf(ids, am))
    assert n == 4 * 2 * (16 + 16) + 16 * 2 + 2
    with pytest.raises(ValueError, match="no parameter in the model"):
        load_trainable(_clf(), path)


def test_length_batches():
    X = [[101, 5, 102], [101, 102], [101, 7, 8, 9, 102], [101, 4, 102]]
    y = torch.tensor([0, 1, 1, 0])
    batches = length_batches(X, y, 2)
    assert [b[0].shape for b in batches] == [(2, 3), (2, 5)]
    ids, am, lab = batches[0]
    assert ids.tolist() == [[101, 102, 0], [101, 5, 102]] and am.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert lab.tolist() == [1, 0]
    shuffled = length_batches(X, y, 1, shuffle_seed=0)
    assert sorted(int(b[2]) for b in shuffled) == [0, 0, 1, 1] and len(shuffled) == 4
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(X, y, 0)
