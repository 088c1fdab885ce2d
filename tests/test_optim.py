"""Unit tests of helpers.optim: optimizers equal to PyTorch, schedules equal to PyTorch/transformers, bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

from helpers import optim as O


def _train(make_opt, steps=20, dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)
    opt = make_opt(model.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=g, dtype=dtype)
        y = torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def test_adamw_equals_torch():
    a, _ = _train(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1))
    b, _ = _train(lambda p: O.AdamW(p, lr=1e-2, weight_decay=0.1))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_lamb_pinned_ratio_is_adamw_and_records_ratios():
    a, _ = _train(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), dtype=torch.float64)
    b, _ = _train(lambda p: O.LAMB(p, lr=1e-2, weight_decay=0.1, eps=1e-8, trust_clip=(1, 1)), dtype=torch.float64)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    m, opt = _train(lambda p: O.LAMB(p, lr=1e-2))
    ratios = opt.trust_ratios(m)
    assert set(ratios) == {n for n, _ in m.named_parameters()} and all(r > 0 for r in ratios.values())


@pytest.mark.parametrize("kw, msg", [(dict(lr=-1e-3), "learning rate"), (dict(betas=(0.9, 1.0)), "betas"),
                                     (dict(betas=(-0.1, 0.9)), "betas"), (dict(eps=-1.0), "eps"),
                                     (dict(weight_decay=-0.1), "weight_decay"), (dict(lr=float("nan")), "learning rate"),
                                     (dict(lr=True), "learning rate"), (dict(betas=(False, 0.9)), "betas"),
                                     (dict(eps=True), "eps"), (dict(weight_decay=False), "weight_decay")])
@pytest.mark.parametrize("cls", [O.AdamW, O.LAMB])
def test_bad_hparams(cls, kw, msg):
    with pytest.raises(ValueError, match=f"^{msg}"):
        cls([nn.Parameter(torch.zeros(2))], **kw)


def test_bad_trust_clip_and_groups():
    with pytest.raises(ValueError, match="trust_clip"):
        O.LAMB([nn.Parameter(torch.zeros(2))], trust_clip=(2, 1))
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        O.decay_groups(nn.Linear(2, 2), -1.0)
    groups = O.decay_groups(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), 0.1)
    assert [len(g["params"]) for g in groups] == [1, 3]
    from helpers.vit import ViT
    vit = ViT(patch_size=7, d_model=8, depth=1, n_heads=2)
    decayed, exempt = (g["params"] for g in O.decay_groups(vit, 0.05, no_decay=("cls_token", "pos.")))
    assert any(p is vit.cls_token for p in exempt) and any(p is vit.pos.emb.weight for p in exempt)
    assert all(p.ndim >= 2 for p in decayed) and len(decayed) + len(exempt) == len(list(vit.parameters()))
    with pytest.raises(ValueError, match="match no parameter"):
        O.decay_groups(vit, 0.05, no_decay=("position_embeddings",))
    with pytest.raises(TypeError, match="list or tuple"):
        O.decay_groups(vit, 0.05, no_decay="cls_token")


def _lrs(make, T, lr=1.0, **okw):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, **okw)
    sched, out = make(opt), []
    for _ in range(T):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return torch.tensor(out, dtype=torch.float64)


def _mine(f, T):
    return torch.tensor([f(t) for t in range(T)], dtype=torch.float64)


def test_schedules_equal_references():
    import transformers
    T, W = 120, 12
    pairs = [
        (lambda o: transformers.get_linear_schedule_with_warmup(o, W, T), O.linear_schedule(T, W)),
        (lambda o: transformers.get_cosine_schedule_with_warmup(o, W, T), O.cosine_schedule(T, W)),
        (lambda o: lr_scheduler.LinearLR(o, 1.0, 0.0, T), O.linear_schedule(T)),
        (lambda o: lr_scheduler.CosineAnnealingLR(o, T, eta_min=0.1), O.cosine_schedule(T, 0, 0.1)),
        (lambda o: lr_scheduler.StepLR(o, 30, 0.5), O.step_schedule(30, 0.5)),
        (lambda o: lr_scheduler.ExponentialLR(o, 0.97), O.exponential_schedule(0.97)),
        (lambda o: lr_scheduler.PolynomialLR(o, T, 2.0), O.polynomial_schedule(T, 2.0)),
        (lambda o: transformers.get_inverse_sqrt_schedule(o, W), O.inverse_sqrt_schedule(W)),
        (lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 20, 2, eta_min=0.05), O.cosine_restarts_schedule(20, 2, 0.05)),
        (lambda o: lr_scheduler.CyclicLR(o, 0.1, 1.0, 15, 10, cycle_momentum=False), O.triangular_schedule(15, 0.1, 10)),
    ]
    for make, f in pairs:
        torch.testing.assert_close(_lrs(make, T), _mine(f, T), rtol=0, atol=1e-12)
    torch.testing.assert_close(_lrs(lambda o: lr_scheduler.OneCycleLR(o, 1.0, total_steps=T), T, momentum=0.9),
                               _mine(O.one_cycle_schedule(T), T), rtol=0, atol=1e-12)


@pytest.mark.parametrize("make, msg", [
    (lambda: O.linear_schedule(10, 11), "warmup .* is longer than training"),
    (lambda: O.cosine_schedule(10, 20), "warmup .* is longer than training"),
    (lambda: O.polynomial_schedule(5, 1.0, 6), "warmup .* is longer than training"),
    (lambda: O.linear_schedule(0), "total_steps must be an int >= 1"),
    (lambda: O.linear_schedule(True), "total_steps must be an int >= 1"),
    (lambda: O.cosine_schedule(10, -1), "warmup_steps must be an int >= 0"),
    (lambda: O.cosine_schedule(10, 0, 1.5), "min_factor must be in"),
    (lambda: O.inverse_sqrt_schedule(0), "warmup_steps must be an int >= 1"),
    (lambda: O.step_schedule(10, -0.5), "gamma must be a finite number > 0"),
    (lambda: O.exponential_schedule(0.0), "gamma must be a finite number > 0"),
    (lambda: O.triangular_schedule(10, 1.5), "base_factor"),
    (lambda: O.one_cycle_schedule(100, 1.2), "pct_start must be in"),
    (lambda: O.one_cycle_schedule(10, 0.1), "pct_start \\* total_steps = 0.1 \\* 10 = 1"),
    (lambda: O.one_cycle_schedule(100, 0.3, div_factor=0), "div_factor must be a finite number > 0"),
    (lambda: O.cosine_restarts_schedule(0), "cycle_steps and cycle_mult must be ints"),
    (lambda: O.cosine_restarts_schedule(10, 1, 5.0), "min_factor .* must be in \\[0, 1\\]"),
    (lambda: O.cosine_restarts_schedule(10, 1, -0.1), "min_factor .* must be in \\[0, 1\\]"),
    (lambda: O.constant_schedule(-3), "warmup_steps must be an int >= 0"),
])
def test_bad_schedules(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


@pytest.mark.parametrize("T, pct", [(3, 0.3), (1, 0.3), (7, 0.1), (11, 0.1), (60, 0.01), (120, 0.3)])
def test_one_cycle_corner_cases_equal_onecyclelr(T, pct):
    """Short cycles where the peak falls before step 1: the same values as OneCycleLR, up to its step total_steps."""
    mine = _mine(O.one_cycle_schedule(T, pct), T + 1)
    ref = _lrs(lambda o: lr_scheduler.OneCycleLR(o, 1.0, total_steps=T, pct_start=pct), T, momentum=0.9)
    torch.testing.assert_close(mine[:T], ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=f"total_steps={T}\\) was asked for step {T + 1}"):
        O.one_cycle_schedule(T, pct)(T + 1)
    with pytest.raises(ZeroDivisionError):  # OneCycleLR's own failure where one_cycle_schedule raises ValueError
        lr_scheduler.OneCycleLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 1.0, total_steps=10,
                                pct_start=0.1)


def test_make_scheduler():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = O.make_scheduler(opt, "linear", total_steps=10, warmup_steps=2)
    assert opt.param_groups[0]["lr"] == 0.0 and isinstance(s, lr_scheduler.LambdaLR)
    with pytest.raises(ValueError, match="unknown schedule"):
        O.make_scheduler(opt, "nope", total_steps=10)


def test_accumulation_equals_big_batch_with_padding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    x = torch.randint(0, 10, (6, 7))
    y = x.clone()
    y[:, 3:][torch.rand(6, 4) < 0.6] = -100  # ragged padding
    loss_sum = lambda m, b: F.cross_entropy(m(b[0]).flatten(0, 1), b[1].flatten(), ignore_index=-100, reduction="sum")
    count = lambda b: (b[1] != -100).sum()
    model.zero_grad()
    big = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
    big.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    mean = O.accumulate_gradients(model, O.split_batch((x, y), 2), loss_sum, count)
    assert abs(mean - big.item()) < 1e-5
    for p, r in zip(model.parameters(), ref):
        torch.testing.assert_close(p.grad, r)


def test_split_batch_and_accumulate_errors():
    parts = O.split_batch({"a": torch.zeros(5, 2), "b": torch.zeros(5)}, 2)
    assert [len(p["a"]) for p in parts] == [2, 2, 1]
    with pytest.raises(ValueError, match="micro_batch_size must be an int >= 1"):
        O.split_batch(torch.zeros(4), 0)
    with pytest.raises(ValueError, match="same size in dim 0"):
        O.split_batch((torch.zeros(4), torch.zeros(3)), 2)
    with pytest.raises(TypeError, match="split_batch takes a tensor"):
        O.split_batch("abc", 2)
    with pytest.raises(ValueError, match="at least one"):
        O.accumulate_gradients(nn.Linear(1, 1), [], lambda m, b: b, lambda b: 1)
    with pytest.raises(ValueError, match="all padding"):
        O.accumulate_gradients(nn.Linear(1, 1), [torch.zeros(1)], lambda m, b: b.sum(), lambda b: 0)
