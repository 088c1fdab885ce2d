"""Unit tests of helpers.train (fit, checkpoints) and helpers.report: re-iteration, accumulation, hooks, bad input."""
from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import helpers.env
from helpers import fit, load_checkpoint, report, save_checkpoint


def _regression(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0])


def _mse(m: nn.Module, b) -> torch.Tensor:
    return F.mse_loss(m(b[0]).squeeze(-1), b[1])


def _sgd(model: nn.Module, lr: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr)


def test_steps_reiterate_a_shuffling_dataloader_each_epoch():
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.arange(12.0)), batch_size=4, shuffle=True)
    model, seen = nn.Linear(1, 1), []

    def loss_fn(m, b):
        seen.append(b[0].tolist())
        return m(b[0][:, None]).pow(2).mean()
    hist = fit(model, loader, loss_fn, _sgd(model, 1e-3), steps=9, progress=False)
    epochs = [sorted(sum(seen[i:i + 3], [])) for i in (0, 3, 6)]
    assert hist["step"] == list(range(1, 10)) and all(e == list(range(12)) for e in epochs)  # 3 full passes
    orders = [sum(seen[i:i + 3], []) for i in (0, 3, 6)]
    assert len({tuple(o) for o in orders}) == 3, "each pass must reshuffle (no cached copy of the first pass)"


class Augmenting:
    """Re-iterable batcher that draws fresh random batches on every pass, and counts its passes."""

    def __init__(self):
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for _ in range(2):
            yield torch.randn(3, 2)


def test_steps_reiterate_an_augmenting_batcher_and_a_list():
    model, seen, data = nn.Linear(2, 1), [], Augmenting()
    loss_fn = lambda m, b: seen.append(b) or m(b).pow(2).mean()
    fit(model, data, loss_fn, _sgd(model), steps=5, progress=False)
    assert data.passes == 3 and len(seen) == 5
    assert not torch.equal(seen[0], seen[2]) and not torch.equal(seen[1], seen[3]), "each pass augments anew"
    x, y = _regression(8)
    hist = fit(nn.Linear(4, 1), [(x[:4], y[:4]), (x[4:], y[4:])], _mse, _sgd(nn.Linear(4, 1)), steps=5, progress=False)
    assert len(hist["loss"]) == 5


def test_generators_are_consumed_once():
    x, y = _regression()
    gen = lambda n: ((x[i:i + 8], y[i:i + 8]) for i in range(0, 8 * n, 8))
    model = nn.Linear(4, 1)
    assert len(fit(model, gen(5), _mse, _sgd(model), steps=5, progress=False)["loss"]) == 5
    with pytest.raises(ValueError, match=r"ran out after 3 batches = 3 optimizer steps of the 5"):
        fit(model, gen(3), _mse, _sgd(model), steps=5, progress=False)
    with pytest.raises(ValueError, match=r"ran out after 5 batches = 2 optimizer steps of the 3"):
        fit(model, gen(5), _mse, _sgd(model), steps=3, accum_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"epochs=2 needs a re-iterable .* for a generator pass steps=N"):
        fit(model, gen(5), _mse, _sgd(model), epochs=2, progress=False)


@pytest.mark.parametrize("kw", [dict(steps=3), dict(epochs=1)])
@pytest.mark.parametrize("empty", [lambda: [], lambda: iter([]), lambda: DataLoader(TensorDataset(torch.zeros(0)))])
def test_empty_batches_raise(kw, empty):
    data = empty()
    if "epochs" in kw and iter(data) is data:
        kw = dict(steps=3)
    model = nn.Linear(1, 1)
    with pytest.raises(ValueError, match="yielded no batch"):
        fit(model, data, lambda m, b: m(b[0]).sum(), _sgd(model), progress=False, **kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(), "exactly one"), (dict(steps=1, epochs=1), "exactly one"), (dict(steps=0), "steps must be an int >= 1"),
    (dict(epochs=1.5), "epochs must be an int"), (dict(steps=True), "steps must be an int"),
    (dict(steps=1, eval_every=1), "eval_every needs an eval_fn"),
    (dict(steps=1, eval_every=0, eval_fn=dict), "eval_every must be an int >= 1"),
    (dict(steps=1, grad_clip=0.0), "grad_clip must be a finite number > 0"),
    (dict(steps=1, grad_clip=-1), "grad_clip must be"), (dict(steps=1, grad_clip=float("inf")), "grad_clip must be"),
    (dict(steps=1, accum_steps=0), "accum_steps must be an int >= 1"),
    (dict(steps=1, accum_steps=2.0), "accum_steps must be an int"),
])
def test_fit_rejects_bad_arguments(kw, msg):
    model = nn.Linear(4, 1)
    with pytest.raises(ValueError, match=msg):
        fit(model, [_regression(8)], _mse, _sgd(model), progress=False, **kw)


def test_fit_rejects_non_scalar_and_non_finite_loss():
    model = nn.Linear(4, 1)
    with pytest.raises(ValueError, match="scalar"):
        fit(model, [_regression(8)], lambda m, b: m(b[0]), _sgd(model), steps=1, progress=False)
    with pytest.raises(FloatingPointError, match="at step 1"):
        fit(model, [_regression(8)], lambda m, b: m(b[0]).sum() * float("nan"), _sgd(model), steps=1, progress=False)


def test_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    x, y = _regression(16)
    micro = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]
    h_big = fit(a, [(x, y)], _mse, _sgd(a, 0.1), steps=1, progress=False)
    h_acc = fit(b, micro, _mse, _sgd(b, 0.1), steps=1, accum_steps=4, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    assert h_acc["loss"][0] == pytest.approx(h_big["loss"][0], rel=1e-5)  # mean of equal-size micro-batch means


def test_accumulation_with_epochs_steps_the_trailing_group():
    x, y = _regression(20)
    micro = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 20, 4)]  # 5 micro-batches: groups of 2, 2 and 1
    model, ref = nn.Linear(4, 1), nn.Linear(4, 1)
    ref.load_state_dict(model.state_dict())
    hist = fit(model, micro, _mse, _sgd(model), epochs=2, accum_steps=2, progress=False)
    opt = _sgd(ref)
    for group in [micro[0:2], micro[2:4], micro[4:]] * 2:  # the same by hand: each group divided by its own size
        opt.zero_grad()
        sum(_mse(ref, b) / len(group) for b in group).backward()
        opt.step()
    assert hist["step"] == list(range(1, 7))
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, r)


def test_grad_clip_scheduler_and_lr_history():
    x, y = _regression(32)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    norms, calls = [], []

    class Spy:  # a scheduler: fit calls step() once per optimizer step, after it
        def step(self):
            norms.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())
            calls.append(1)
            opt.param_groups[0]["lr"] *= 0.5

    hist = fit(model, [(x * 100, y * 100)], _mse, opt, steps=4, scheduler=Spy(), grad_clip=0.25, progress=False)
    assert len(calls) == 4 and all(n == pytest.approx(0.25, rel=1e-4) for n in norms)
    assert hist["lr"] == [1.0, 0.5, 0.25, 0.125]  # the rate each step used


def test_eval_every_and_at_the_end():
    x, y = _regression(64)
    model = nn.Linear(4, 1)
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]
    modes = []
    eval_fn = lambda: modes.append(model.training) or {"val": _mse(model, (x, y)).item()}
    hist = fit(model, batches, _mse, _sgd(model, 0.1), epochs=5, eval_fn=eval_fn, eval_every=15, progress=False)
    assert hist["eval_step"] == [15, 30, 40] and len(hist["val"]) == 3 and not any(modes) and model.training
    assert hist["loss"][-1] < 0.01 * hist["loss"][0] and hist["seconds"][0] > 0


def test_autocast_runs_the_loss_under_bf16_autocast():
    if not hasattr(helpers.env, "autocast"):
        pytest.skip("helpers.env.autocast is not written yet")
    model, flags = nn.Linear(4, 1), []

    def loss_fn(m, b):
        flags.append(torch.is_autocast_enabled("cpu"))
        return _mse(m, b).float()
    fit(model, [_regression(8)], loss_fn, _sgd(model), steps=2, autocast=True, progress=False)
    fit(model, [_regression(8)], loss_fn, _sgd(model), steps=1, progress=False)
    assert flags == [True, True, False]


# --------------------------------------------------------------------------- report

def test_report_keeps_four_significant_digits(capsys):
    report(9, tiny=1.01e-07, big=1234567.0, ratio=0.123456, n=1234567, flag=True, name="one-cycle", zero=0.0)
    out = json.loads(capsys.readouterr().out.strip().removeprefix("RESULTS "))
    assert out["tiny"] == 1.01e-07 and out["big"] == 1235000.0 and out["ratio"] == 0.1235
    assert out["n"] == 1234567 and out["flag"] is True and out["name"] == "one-cycle" and out["zero"] == 0.0
    report(9, t=torch.tensor(2.0 / 3), i=torch.tensor(7))
    out = json.loads(capsys.readouterr().out.strip().removeprefix("RESULTS "))
    assert out["t"] == 0.6667 and out["i"] == 7


@pytest.mark.parametrize("key", ["chapter", "seconds"])
def test_report_rejects_reserved_keys(key):
    with pytest.raises(ValueError, match=f"{key} is set by report"):
        report(1, **{key: 3, "x": 1.0})
    with pytest.raises(ValueError, match="chapter must be an int"):
        report(True, x=1.0)


# --------------------------------------------------------------------------- checkpoints

@dataclasses.dataclass
class Config:
    n_layer: int = 2


def test_checkpoint_accepts_what_weights_only_loads(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = dict(model=model.state_dict(), optimizer=opt.state_dict(), step=7, loss=1.5, name="run", tags=["a", 1],
                 extra={"nested": (1, 2.0, None)}, rng=torch.get_rng_state(), py_rng=random.getstate(),
                 config=dataclasses.asdict(Config()), shape=torch.Size([2, 3]), dtype=torch.bfloat16)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "ok.pt", **state))
    assert loaded.keys() == state.keys() and loaded["py_rng"] == random.getstate() and loaded["config"] == {"n_layer": 2}
    torch.testing.assert_close(loaded["rng"], state["rng"])
    torch.testing.assert_close(loaded["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    random.setstate(loaded["py_rng"])  # the tuple comes back usable


@pytest.mark.parametrize("value, kind", [(Config(), "Config"), (nn.Linear(1, 1), "Linear"), (lambda: 0, "function")])
def test_checkpoint_refuses_what_weights_only_rejects(tmp_path, value, kind):
    with pytest.raises(TypeError, match=rf"could not read back bad \(a {kind}\).*dataclasses.asdict"):
        save_checkpoint(tmp_path / "ck" / "bad.pt", model=nn.Linear(1, 1).state_dict(), bad=value)
    assert not (tmp_path / "ck" / "bad.pt").exists() and not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="needs something to save"):
        save_checkpoint(tmp_path / "empty.pt")


def test_checkpoint_refuses_numpy(tmp_path):
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match=r"np_rng \(a tuple\).*tolist"):
        save_checkpoint(tmp_path / "np.pt", np_rng=np.random.get_state(), step=1)
    assert not list(tmp_path.iterdir())
