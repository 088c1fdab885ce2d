import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import finetune as FT
from helpers.bert import Bert, BertClassifier, BertConfig
from helpers.train import load_checkpoint, save_checkpoint

# --------------------------------------------------------------------------------------------------- splitting

def test_stratified_split_keeps_proportions_and_is_a_partition():
    labels = [0] * 700 + [1] * 300
    parts = FT.stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    assert [len(p) for p in parts] == [800, 100, 100]
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(1000))
    for p in parts:
        assert np.mean(np.array(labels)[p]) == pytest.approx(0.3)
    again = FT.stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    other = FT.stratified_split(labels, (0.8, 0.1, 0.1), seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not np.array_equal(parts[1], other[1])


def test_stratified_split_pairs_and_bad_input():
    strata = [(s, y) for s in range(2) for y in range(2) for _ in range(50)]
    tr, te = FT.stratified_split(strata, (0.5, 0.5))
    assert sorted(strata[i] for i in tr) == sorted(strata[i] for i in te)
    with pytest.raises(ValueError, match="sum"):
        FT.stratified_split([0, 1], (0.5, 0.6))
    with pytest.raises(ValueError, match="empty"):
        FT.stratified_split([])


# ------------------------------------------------------------------------------------------------- calibration

def test_ece_by_hand():
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([1, 0, 0, 1])
    # bins (width 0.1): 0.9 → bin 8 (right), 0.8 → bin 7 (wrong), 0.6 → bin 5 (right), 0.7 → bin 6 (right)
    want = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.6) + abs(1 - 0.7)) / 4
    assert FT.expected_calibration_error(probs, labels, 10) == pytest.approx(want)
    b = FT.reliability_bins(probs, labels, 10)
    assert b["count"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert np.isnan(b["accuracy"][0]) and b["accuracy"][7] == 0.0
    perfect = np.array([[0.0, 1.0]] * 5)
    assert FT.expected_calibration_error(perfect, np.ones(5, dtype=int)) == 0.0


def test_calibration_bad_input():
    with pytest.raises(ValueError, match="softmax"):
        FT.expected_calibration_error(np.array([[2.0, 3.0]]), np.array([1]))
    with pytest.raises(ValueError, match="labels"):
        FT.expected_calibration_error(np.array([[0.5, 0.5]]), np.array([1, 0]))
    with pytest.raises(ValueError, match="n_bins"):
        FT.reliability_bins(np.array([[0.5, 0.5]]), np.array([1]), 0)


def test_temperature_recovers_a_known_temperature_and_lowers_ece():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 2, generator=g) * 2
    labels = torch.multinomial(F.softmax(true_logits, -1), 1, generator=g).squeeze(1)
    overconfident = true_logits * 3  # a model three times too sure of itself
    t = FT.fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = FT.expected_calibration_error(F.softmax(overconfident, -1), labels)
    after = FT.expected_calibration_error(F.softmax(overconfident / t, -1), labels)
    assert after < before / 2
    with pytest.raises(ValueError):
        FT.fit_temperature(torch.zeros(3), torch.zeros(3))


# ------------------------------------------------------------------------------------------- compact vocabulary

class _Tok:
    unk_token_id = 100
    vocab = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}

    def convert_tokens_to_ids(self, t):
        return self.vocab.get(t, self.unk_token_id)


def test_build_char_vocab_and_remap():
    kept = FT.build_char_vocab([[7, 7, 8, 9], [7, 8]], _Tok(), min_count=2)
    assert kept == [0, 100, 101, 102, 103, 7, 8]  # specials first, then by frequency; 9 seen once is dropped
    lookup = np.full(200, -1)
    lookup[kept] = np.arange(len(kept))
    assert FT.remap_ids([7, 9, 8], lookup) == [5, 1, 6]  # 9 → [UNK] = 1
    assert FT.remap_ids([], lookup) == []


# ------------------------------------------------------------------------------------ saved review classifier

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from helpers.data import bert_chinese_tokenizer
    tok = bert_chinese_tokenizer()
    texts = ["这家酒店很干净", "送餐太慢了", "服务很好"]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    kept = FT.build_char_vocab(ids, tok, min_count=1)
    torch.manual_seed(0)
    model = BertClassifier(Bert(BertConfig(vocab_size=len(kept), hidden_size=16, num_layers=1, num_heads=2,
                                           intermediate_size=32, max_positions=12)), num_labels=2).eval()
    folder = tmp_path_factory.mktemp("clf")
    FT.save_review_classifier(folder, model, tok, kept, temperature=1.5, window=8)
    return folder, model, tok, kept


def test_save_load_predict_matches_the_model(saved):
    folder, model, tok, kept = saved
    clf = FT.load_review_classifier(folder)
    out = FT.predict(["送餐太慢了"], folder)
    assert set(out[0]) == {"label", "prob", "chunks"} and out[0]["chunks"] == 1
    lookup = np.full(len(tok), -1)
    lookup[kept] = np.arange(len(kept))
    ids = torch.tensor([[2, *FT.remap_ids(tok("送餐太慢了", add_special_tokens=False)["input_ids"], lookup), 3]])
    with torch.no_grad():
        p = F.softmax(model(ids, torch.ones_like(ids)) / 1.5, -1)[0]
    assert out[0]["prob"] == pytest.approx(p.max().item(), abs=1e-6)
    assert out[0]["label"] == clf.labels[int(p.argmax())]


def test_long_text_is_chunked_and_averaged(saved):
    folder, *_ = saved
    clf = FT.load_review_classifier(folder)
    long_text = "这家酒店很干净送餐太慢了服务很好" * 3  # 48 characters, window 8 → 6 tokens per chunk
    chunks = clf.encode(long_text)
    assert len(chunks) == 8 and all(c[0] == 2 and c[-1] == 3 and len(c) <= 8 for c in chunks)
    probs, n = clf.probabilities([long_text])
    assert n == [8]
    parts = [clf.probabilities([long_text[6 * k:6 * k + 6]])[0][0] for k in range(8)]
    np.testing.assert_allclose(probs[0], np.mean(parts, 0), atol=1e-6)


@pytest.mark.parametrize("bad, err", [([], ValueError), ([""], ValueError), (["  "], ValueError), (["ok", 3], TypeError),
                                      ("这家酒店很干净", TypeError), (None, TypeError)])
def test_predict_rejects_bad_input(saved, bad, err):
    folder, *_ = saved
    with pytest.raises(err):
        FT.predict(bad, folder)


def test_mismatched_saved_model_is_refused(saved, tmp_path):
    folder, model, tok, kept = saved
    FT.save_review_classifier(tmp_path, model, tok, kept, window=8)
    ck = load_checkpoint(tmp_path / "model.pt")
    ck["meta"]["config"]["hidden_size"] = 32
    save_checkpoint(tmp_path / "model.pt", **ck)
    with pytest.raises(ValueError, match="do not match"):
        FT.load_review_classifier(tmp_path)
    ck["meta"]["config"]["hidden_size"] = 16
    ck["meta"]["config"]["rotary"] = True  # a field this code does not know
    save_checkpoint(tmp_path / "model.pt", **ck)
    with pytest.raises(ValueError, match="unknown"):
        FT.load_review_classifier(tmp_path)
    del ck["meta"]["config"]["rotary"]
    ck["meta"]["format_version"] = FT.FORMAT_VERSION + 1
    save_checkpoint(tmp_path / "model.pt", **ck)
    with pytest.raises(ValueError, match="format_version"):
        FT.load_review_classifier(tmp_path)
    with pytest.raises(FileNotFoundError, match="12_finetuning"):
        FT.load_review_classifier(tmp_path / "nowhere")


def test_save_rejects_inconsistent_arguments(saved, tmp_path):
    _, model, tok, kept = saved
    with pytest.raises(ValueError, match="window"):
        FT.save_review_classifier(tmp_path, model, tok, kept, window=99)
    with pytest.raises(ValueError, match="vocab_size"):
        FT.save_review_classifier(tmp_path, model, tok, kept[:-1])


def test_command_line(saved, capsys):
    folder, *_ = saved
    assert FT.main(["送餐太慢了", "服务很好", "--model", str(folder)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in ("負面", "正面") and 0.5 <= float(lines[0].split("\t")[1]) <= 1
    assert FT.main(["   ", "--model", str(folder)]) == 2
    assert "empty" in capsys.readouterr().err
