"""helpers.compress (KD loss, structured-pruning rebuild, head importance and selection) and helpers.teacher (the
cached SST-2 teacher: training, atomic save, reload), on tiny models."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from helpers.bert import Bert, BertClassifier, BertConfig
from helpers.compress import (
    check_amount,
    classifier_logits,
    count_heads,
    head_importance,
    heads_to_prune,
    kd_loss,
    keep_by_norm,
    kept_units,
    latency_ms,
    serialized_kb,
    shrink_pair,
    soft_targets,
)
from helpers.teacher import (
    TeacherRecipe,
    evaluate,
    load_classifier,
    load_teacher,
    save_classifier,
    teacher_path,
    train_classifier,
)


def tiny_classifier(seed=0, heads=4):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=heads, intermediate_size=32,
                     max_positions=16, dropout=0.0)
    return BertClassifier(Bert(cfg), num_labels=2).eval()


def tiny_batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 50, (4, 7), generator=g)
        am = torch.ones_like(ids)
        am[0, 5:] = 0
        out.append((ids * am, am, torch.randint(0, 2, (4,), generator=g)))
    return out


# --------------------------------------------------------------------------- KD loss

def test_kd_loss_equals_kldivloss_batchmean():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    for T, a in ((1.0, 0.5), (2.0, 0.3), (4.0, 1.0), (3.0, 0.0)):
        ref = a * T * T * nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / T, -1), F.softmax(t / T, -1)) \
            + (1 - a) * F.cross_entropy(s, y)
        torch.testing.assert_close(kd_loss(s, t, y, T, a), ref)


def test_kd_loss_zero_when_student_matches_teacher_and_detaches_teacher():
    t = torch.randn(4, 3, requires_grad=True)
    loss = kd_loss(t.detach().clone(), t, temperature=2.0, alpha=1.0)
    assert abs(loss.item()) < 1e-6
    s = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, t, temperature=2.0, alpha=1.0).backward()
    assert t.grad is None and s.grad is not None


def test_soft_targets_soften_with_temperature():
    z = torch.tensor([[3.0, 0.0]])
    assert soft_targets(z, 4.0)[0, 0] < soft_targets(z, 1.0)[0, 0]
    torch.testing.assert_close(soft_targets(z, 1.0), F.softmax(z, -1))


@pytest.mark.parametrize("T", [0, -1.0, float("nan"), "2", True])
def test_kd_loss_rejects_bad_temperature(T):
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), temperature=T)
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(torch.randn(2, 3), T)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), None])
def test_kd_loss_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), alpha=alpha)


def test_kd_loss_rejects_mismatched_shapes_and_missing_labels():
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(torch.randn(2, 3), torch.randn(3, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), None, alpha=0.5)
    with pytest.raises(ValueError, match="labels"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1, 2]), alpha=0.5)


# --------------------------------------------------------------------------- pruning amounts and rebuilds

@pytest.mark.parametrize("amount", [-0.1, 1, 1.0, 2, "0.5", None, True])
def test_check_amount_rejects_outside_0_1(amount):
    with pytest.raises(ValueError, match="amount"):
        check_amount(amount)
    with pytest.raises(ValueError, match="amount"):
        keep_by_norm(nn.Linear(3, 4), amount)


def test_check_amount_accepts_fractions():
    assert check_amount(0) == 0.0 and check_amount(0.95) == 0.95


def test_keep_by_norm_keeps_largest_units():
    lin = nn.Linear(3, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0, 0], [5, 0, 0], [0.1, 0, 0], [3, 0, 0]]))
    assert keep_by_norm(lin, 0.5).tolist() == [1, 3]
    assert keep_by_norm(lin, 0.0).tolist() == [0, 1, 2, 3]


class Net(nn.Module):
    def __init__(self, c1=6, c2=5, h=7):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, c1, 3), nn.Conv2d(c1, c2, 3)
        self.fc1, self.fc2 = nn.Linear(c2 * 2 * 2, h), nn.Linear(h, 3)

    def forward(self, x):  # 12 → 10 → 5 → 3 → (pool, ceil) 2
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, ceil_mode=True)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def test_shrink_pair_rebuilt_equals_masked_network():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # positive biases, so pruned units really output a constant > 0
        for m in (net.conv1, net.conv2, net.fc1):
            m.bias.uniform_(0.1, 0.5)
    masked = copy.deepcopy(net)
    for m in (masked.conv1, masked.conv2, masked.fc1):
        prune.ln_structured(m, "weight", amount=0.5, n=2, dim=0)
        prune.remove(m, "weight")
    k1, k2, k3 = (kept_units(m.weight) for m in (masked.conv1, masked.conv2, masked.fc1))
    small = Net(len(k1), len(k2), len(k3))
    small.conv1, c2 = shrink_pair(masked.conv1, masked.conv2, k1)
    small.conv2, f1 = shrink_pair(c2, masked.fc1, k2)
    small.fc1, small.fc2 = shrink_pair(f1, masked.fc2, k3)
    x = torch.randn(5, 1, 12, 12)
    torch.testing.assert_close(small(x), masked(x))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    # without the fold, the outputs differ: the check above is not vacuous
    nofold = copy.deepcopy(small)
    with torch.no_grad():
        nofold.fc2.bias.copy_(masked.fc2.bias)
    assert not torch.allclose(nofold(x), masked(x), atol=1e-4)


def test_shrink_pair_rejects_padding_and_bad_keep():
    a, b = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 3, padding=1)
    with pytest.raises(ValueError, match="padding"):
        shrink_pair(a, b, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        shrink_pair(nn.Linear(2, 4), nn.Linear(4, 2), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="distinct"):
        shrink_pair(nn.Linear(2, 4), nn.Linear(4, 2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="multiple"):
        shrink_pair(nn.Linear(2, 4), nn.Linear(6, 2), torch.tensor([0]))
    with pytest.raises(TypeError):
        shrink_pair(nn.ReLU(), nn.Linear(4, 2), torch.tensor([0]))


# --------------------------------------------------------------------------- heads

def test_classifier_logits_without_mask_is_the_model():
    m, (ids, am, _) = tiny_classifier(), tiny_batches(1)[0]
    torch.testing.assert_close(classifier_logits(m, ids, am), m(ids, am))


def test_head_importance_matches_finite_difference_of_gate():
    m, batches = tiny_classifier(), tiny_batches(2)
    imp = head_importance(m, batches, normalize=False)
    assert imp.shape == (2, 4) and (imp >= 0).all()
    # |dL/dgate| for layer 1, head 2 by central differences, summed over batches as in head_importance
    eps, total = 1e-3, 0.0
    for ids, am, y in batches:
        gp, gm = torch.ones(2, 4, dtype=torch.float64), torch.ones(2, 4, dtype=torch.float64)
        gp[1, 2] += eps
        gm[1, 2] -= eps
        m64 = copy.deepcopy(m).double()
        with torch.no_grad():
            lp = F.cross_entropy(classifier_logits(m64, ids, am, gp), y)
            lm = F.cross_entropy(classifier_logits(m64, ids, am, gm), y)
        total += abs((lp - lm).item() / (2 * eps)) * len(y)
    assert abs(imp[1, 2].item() - total) < 1e-4 * max(1.0, total)


def test_heads_to_prune_picks_lowest_and_matches_mask():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.8], [0.2, 0.7, 0.3, 0.6]])
    assert heads_to_prune(scores, 3) == {0: [1], 1: [0, 2]}
    m, (ids, am, _) = tiny_classifier(), tiny_batches(1)[0]
    plan = heads_to_prune(scores, 3)
    mask = torch.ones(2, 4)
    for layer, hs in plan.items():
        mask[layer, hs] = 0
    pruned = copy.deepcopy(m)
    pruned.bert.prune_heads(plan)
    assert count_heads(pruned) == [3, 2]
    torch.testing.assert_close(pruned(ids, am), classifier_logits(m, ids, am, mask))


def test_heads_to_prune_rejects_emptying_a_layer_and_bad_n():
    scores = torch.tensor([[0.1, 0.2], [0.9, 0.8]])
    with pytest.raises(ValueError, match="every head of layer"):
        heads_to_prune(scores, 2)
    with pytest.raises(ValueError, match="n must be"):
        heads_to_prune(scores, 4)
    with pytest.raises(ValueError, match="n must be"):
        heads_to_prune(scores, -1)
    with pytest.raises(ValueError, match="scores"):
        heads_to_prune(torch.rand(4), 1)
    m = tiny_classifier()
    with pytest.raises(ValueError, match="all"):
        m.bert.prune_heads({0: [0, 1, 2, 3]})


def test_size_and_latency_probes():
    assert serialized_kb(torch.zeros(1024)) > 4
    assert latency_ms(lambda: None, repeat=3, warmup=0) >= 0
    with pytest.raises(ValueError):
        latency_ms(lambda: None, repeat=0)


# --------------------------------------------------------------------------- teacher

def test_train_classifier_is_deterministic_and_learns():
    batches = tiny_batches(6)
    a, b = tiny_classifier(), tiny_classifier()
    la = train_classifier(a, batches * 5, lr=3e-3, seed=1)
    lb = train_classifier(b, batches * 5, lr=3e-3, seed=1)
    assert la == lb
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    assert sum(la[-6:]) < sum(la[:6])
    assert 0.0 <= evaluate(a, batches) <= 1.0
    with pytest.raises(ValueError, match="empty"):
        train_classifier(a, [], lr=1e-3)


def test_save_classifier_is_atomic_and_reloads_pruned_shapes(tmp_path):
    m, (ids, am, _) = tiny_classifier(), tiny_batches(1)[0]
    m.bert.prune_heads({0: [1, 3], 1: [0]})
    path = save_classifier(m, tmp_path / "sub" / "clf.safetensors", val_acc=0.5)
    assert [p.name for p in path.parent.iterdir()] == ["clf.safetensors"]  # no temporary file left behind
    back, info = load_classifier(path)
    assert info == {"val_acc": 0.5} and count_heads(back) == [2, 3]
    torch.testing.assert_close(back(ids, am), m(ids, am))
    with pytest.raises(TypeError):
        save_classifier(m.bert, tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.safetensors")


def test_teacher_recipe_validation_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_DATA", str(tmp_path))
    r = TeacherRecipe(n_train=64)
    assert teacher_path(r).parent == tmp_path / "teacher" and "n64" in teacher_path(r).name
    assert teacher_path(r) != teacher_path(TeacherRecipe(n_train=65))
    with pytest.raises(FileNotFoundError, match="python -m helpers.teacher"):
        load_teacher(r, train_if_missing=False)
    for bad in (dict(n_train=0), dict(lr=0.0), dict(warmup=1.0), dict(batch_size=2.5)):
        with pytest.raises(ValueError):
            TeacherRecipe(**bad)
