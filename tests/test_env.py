import contextlib
import subprocess
import sys

import pytest
import torch

import helpers
from helpers import env


def test_bf16_fast_follows_cpu_flags(monkeypatch):
    monkeypatch.delenv("LLMBOOK_BF16", raising=False)
    env._bf16_fast_cached.cache_clear()
    monkeypatch.setattr(env, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert env.bf16_runs("cpu") and not env.bf16_fast("cpu")  # runs everywhere, but is not fast without the ISA
    for flag in ("avx512_bf16", "amx_bf16", "bf16"):
        env._bf16_fast_cached.cache_clear()
        monkeypatch.setattr(env, "cpu_flags", lambda flag=flag: frozenset({"avx2", flag}))
        assert env.bf16_fast("cpu"), flag
    env._bf16_fast_cached.cache_clear()


def test_bf16_fast_measures_when_flags_unknown(monkeypatch):
    monkeypatch.delenv("LLMBOOK_BF16", raising=False)
    measure = env._timed_bf16_speedup
    assert measure(n=32, repeat=1) > 0
    monkeypatch.setattr(env, "cpu_flags", lambda: None)
    for speedup, expected in ((0.02, False), (1.6, True)):
        env._bf16_fast_cached.cache_clear()
        monkeypatch.setattr(env, "_timed_bf16_speedup", lambda s=speedup: s)
        assert env.bf16_fast("cpu") is expected
    env._bf16_fast_cached.cache_clear()


def test_bf16_override_and_bad_values(monkeypatch):
    monkeypatch.setenv("LLMBOOK_BF16", "1")
    assert env.bf16_fast("cpu") is True
    monkeypatch.setenv("LLMBOOK_BF16", "0")
    assert env.bf16_fast("cpu") is False
    monkeypatch.setenv("LLMBOOK_BF16", "yes")
    with pytest.raises(ValueError, match="LLMBOOK_BF16 must be '0'"):
        env.bf16_fast("cpu")


def test_autocast_context(monkeypatch):
    a = torch.randn(4, 4)
    monkeypatch.setenv("LLMBOOK_BF16", "0")
    with helpers.autocast("cpu"):
        assert (a @ a).dtype == torch.float32
    monkeypatch.setenv("LLMBOOK_BF16", "1")
    with helpers.autocast("cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with helpers.autocast("cpu", enabled=False):
        assert (a @ a).dtype == torch.float32
    assert isinstance(helpers.autocast("cpu", enabled=False), contextlib.AbstractContextManager)
    with pytest.raises(TypeError, match="enabled must be"):
        helpers.autocast("cpu", enabled="yes")


def test_cpu_flags_and_report():
    flags = env.cpu_flags()
    assert flags is None or isinstance(flags, frozenset)
    info = helpers.environment_report()
    assert info["bf16_fast"] == env.bf16_fast() and info["bf16_runs"] == env.bf16_runs()
    if flags is not None and "avx512_bf16" not in flags and "amx_bf16" not in flags and "bf16" not in flags:
        assert info["bf16_fast"] is False or info["bf16_forced"] == "1"


def test_get_device_refuses_missing_accelerator(monkeypatch):
    monkeypatch.delenv("LLMBOOK_DEVICE", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            helpers.get_device("cuda")
    with pytest.raises(ValueError, match="seed must be"):
        helpers.seed_everything(True)


def test_import_helpers_does_not_import_matplotlib():
    code = "import sys, helpers; assert 'matplotlib' not in sys.modules; helpers.set_style; assert 'matplotlib' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
