#!/usr/bin/env python3
"""`make bench`: how fast the book's own implementations are, against the libraries readers would use instead.

    python scripts/bench.py [--only NAME ...] [--gpt-seq N] [--out DIR] [--profile]
    python scripts/bench.py --readme [--out DIR]      # rewrite README's performance section from DIR/bench.json

Every row times two callables side by side in one run with ``torch.utils.benchmark.Timer.blocked_autorange``
(warm-up, then blocks of runs; median and interquartile range), and reports the ratio ``baseline time ÷ ours``
(> 1: ours is faster). The table is printed with the machine (CPU model, cores, ISA flags, GPU), written to
``data/bench/bench.json`` (plus ``data/bench/scaling.png``, the attention scaling plot) and, with ``--readme``, into README.md
between ``<!-- bench:start -->`` and ``<!-- bench:end -->``: the README numbers are never typed by hand.
``BENCH_QUICK=1`` runs tiny sizes in seconds (tests/test_bench.py runs it, so that the script cannot rot).
``--profile`` prints a torch.profiler summary of both sides of each row, outside the timed path (how the notes in
the table were found). Runs on CUDA when present.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.benchmark import Timer  # noqa: E402

import helpers  # noqa: E402
from helpers.env import cpu_flags, environment_report  # noqa: E402
from helpers.generate import generate  # noqa: E402
from helpers.gpt import GPT, to_hf  # noqa: E402
from helpers.layers import MultiHeadAttention, causal_mask, scaled_dot_product_attention  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "bench"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
README_ANCHOR = "## On a GPU"
SECTION = ("## Performance · 效能\n\n"
           "How fast the book's from-scratch code runs next to the libraries readers would use instead, measured side "
           "by side in one run of `make bench` on the machine below (regenerate it on yours).\n"
           "本書從零實作的程式碼與讀者會改用的函式庫並排計時的結果(同一次 `make bench` 執行;在你的機器上重跑即可更新)。\n\n")
QUICK = os.environ.get("BENCH_QUICK", "").strip() not in ("", "0")

# Sizes: (full run, BENCH_QUICK run). GPU readers can raise them; the CPU run must stay under 3 minutes.
SIZES = {
    "min_run_time": (0.4, 0.02),
    "attn": (dict(B=4, H=4, T=256, d=32), dict(B=1, H=2, T=32, d=16)),
    "gpt": ({"small": dict(n_layer=2, n_head=4, n_embd=128, vocab_size=4096, block_size=256, B=8),
             "medium": dict(n_layer=4, n_head=8, n_embd=256, vocab_size=8192, block_size=256, B=4)},
            {"tiny": dict(n_layer=1, n_head=2, n_embd=32, vocab_size=128, block_size=32, B=2)}),
    "gpt_seq": (128, 16),
    "bert_seq": (64, 16),
    "bert_batches": ((1, 32), (1, 4)),
    "gen": (dict(prompt=16, new=48), dict(prompt=4, new=8)),
    "bf16": (dict(n_layer=1, n_head=2, n_embd=64, vocab_size=256, block_size=32, B=4), dict(
        n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16, B=2)),
    "teacher_batch": (32, 2),
    "scaling": ((64, 128, 256, 512, 1024, 2048), (32, 64, 128)),
}
BENCH_NAMES = ("attention", "mha", "gpt", "bert", "generate", "bf16", "teacher", "scaling")


def size(key):
    return SIZES[key][1 if QUICK else 0]


# --------------------------------------------------------------------------- timing

def measure(fn, label: str) -> dict:
    """Median and IQR (ms) of ``fn()`` from blocked_autorange, with the threads this process uses."""
    fn()  # warm-up outside the measurement (first-call allocations, lazy init)
    m = Timer(stmt="fn()", globals={"fn": fn}, label=label, num_threads=torch.get_num_threads()
              ).blocked_autorange(min_run_time=size("min_run_time"))
    return {"median_ms": 1000 * m.median, "iqr_ms": 1000 * m.iqr, "runs": len(m.times) * m.number_per_run}


def row(bench: str, name: str, ours_label: str, ours, base_label: str, base, note: str = "",
        unit: str = "ms", per_call: float = 1.0) -> dict:
    """Time ``ours`` and ``base`` (callables) side by side; ratio = baseline time / our time (> 1: ours faster).
    ``unit='tok/s'`` reports ``per_call`` tokens per call as a rate instead of the time."""
    a, b = measure(ours, ours_label), measure(base, base_label)
    r = {"bench": bench, "name": name, "ours": ours_label, "ours_ms": a["median_ms"], "ours_iqr_ms": a["iqr_ms"],
         "baseline": base_label, "baseline_ms": b["median_ms"], "baseline_iqr_ms": b["iqr_ms"],
         "ratio": b["median_ms"] / a["median_ms"], "note": note}
    if unit == "tok/s":
        r["ours_tok_s"], r["baseline_tok_s"] = per_call * 1000 / a["median_ms"], per_call * 1000 / b["median_ms"]
    r["_fns"] = (ours, base)
    return r


def _zero(*models):
    for m in models:
        m.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- benchmarks

def bench_attention(dev, args):
    s = size("attn")
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(s["B"], s["H"], s["T"], s["d"], generator=g).to(dev).requires_grad_() for _ in range(3))
    mask = causal_mask(s["T"], dev)
    ours_out, _ = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(ours_out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-4)
    shape = f"B={s['B']} H={s['H']} T={s['T']} d={s['d']}, causal"

    def ours_fwd():
        with torch.no_grad():
            scaled_dot_product_attention(q, k, v, mask)

    def lib_fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def ours_bwd():
        scaled_dot_product_attention(q, k, v, mask)[0].sum().backward()

    def lib_bwd():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    note = ("naive path materialises the T×T scores, mask fill, softmax, nan_to_num and weights (returned too); "
            "the fused kernel streams them")
    return [row("attention", f"attention fwd ({shape})", "ours scaled_dot_product_attention", ours_fwd,
                "F.scaled_dot_product_attention", lib_fwd, note),
            row("attention", f"attention fwd+bwd ({shape})", "ours scaled_dot_product_attention", ours_bwd,
                "F.scaled_dot_product_attention", lib_bwd, note)]


def bench_mha(dev, args):
    s = size("attn")
    D = s["H"] * s["d"]
    torch.manual_seed(0)
    ours = MultiHeadAttention(D, s["H"]).to(dev)
    lib = nn.MultiheadAttention(D, s["H"], batch_first=True).to(dev)
    with torch.no_grad():  # the same weights
        lib.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        lib.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        lib.out_proj.weight.copy_(ours.out_proj.weight)
        lib.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(s["B"], s["T"], D, device=dev, requires_grad=True)
    mask = causal_mask(s["T"], dev)
    lib_mask = ~mask  # nn.MultiheadAttention: True = may NOT attend
    torch.testing.assert_close(ours(x, mask=mask), lib(x, x, x, attn_mask=lib_mask, need_weights=False)[0],
                               atol=1e-5, rtol=1e-4)
    shape = f"B={s['B']} T={s['T']} d_model={D} heads={s['H']}, causal"
    ours.eval(), lib.eval()

    def ours_fwd():
        with torch.no_grad():
            ours(x, mask=mask)

    def lib_fwd():
        with torch.no_grad():
            lib(x, x, x, attn_mask=lib_mask, need_weights=False)

    def ours_bwd():
        _zero(ours)
        ours(x, mask=mask).sum().backward()

    def lib_bwd():
        _zero(lib)
        lib(x, x, x, attn_mask=lib_mask, need_weights=False)[0].sum().backward()

    return [row("mha", f"MultiHeadAttention fwd ({shape})", "ours MultiHeadAttention", ours_fwd,
                "nn.MultiheadAttention", lib_fwd,
                "three q/k/v Linear calls vs one packed in_proj matmul; both use the fused kernel"),
            row("mha", f"MultiHeadAttention fwd+bwd ({shape})", "ours MultiHeadAttention", ours_bwd,
                "nn.MultiheadAttention", lib_bwd,
                "three q/k/v Linear calls vs one packed in_proj matmul; both use the fused kernel")]


def _gpt_pair(cfg: dict, dev):
    torch.manual_seed(0)
    ours = GPT(**{k: v for k, v in cfg.items() if k != "B"}).to(dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = to_hf(ours).to(dev)
    return ours, hf


def bench_gpt(dev, args):
    rows = []
    T = args.gpt_seq or size("gpt_seq")
    for label, cfg in size("gpt").items():
        ours, hf = _gpt_pair(cfg, dev)
        ours.train(), hf.train()
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, cfg["vocab_size"], (cfg["B"], T + 1), generator=g).to(dev)
        inp, tgt = x[:, :-1], x[:, 1:]
        with torch.no_grad():
            torch.testing.assert_close(ours(inp), hf(inp).logits, atol=1e-4, rtol=1e-4)
        V = cfg["vocab_size"]

        def ours_step(ours=ours, inp=inp, tgt=tgt, V=V):
            _zero(ours)
            F.cross_entropy(ours(inp).reshape(-1, V), tgt.reshape(-1)).backward()

        def hf_step(hf=hf, inp=inp, tgt=tgt, V=V):
            _zero(hf)
            F.cross_entropy(hf(inp).logits.reshape(-1, V), tgt.reshape(-1)).backward()

        shape = (f"{label}: {cfg['n_layer']}L d={cfg['n_embd']} V={V}, B={cfg['B']} T={T}")
        rows.append(row("gpt", f"GPT fwd+bwd ({shape})", "ours GPT", ours_step, "GPT2LMHeadModel (same weights)",
                        hf_step, "", ))
    return rows


def _minilm():
    from transformers import BertModel
    from transformers import logging as hf_logging

    from helpers.bert import from_pretrained
    from helpers.data import minilm_path
    hf_logging.set_verbosity_error()
    return from_pretrained().eval(), BertModel.from_pretrained(str(minilm_path()), local_files_only=True).eval()


def bench_bert(dev, args):
    try:
        ours, hf = _minilm()
    except (OSError, FileNotFoundError, ValueError) as e:
        return f"all-MiniLM-L6-v2 is not available ({type(e).__name__}: {e}); run `make data`"
    ours, hf = ours.to(dev), hf.to(dev)
    T, rows = size("bert_seq"), []
    for B in size("bert_batches"):
        g = torch.Generator().manual_seed(2)
        ids = torch.randint(1000, 30000, (B, T), generator=g).to(dev)
        am = torch.ones(B, T, dtype=torch.long, device=dev)
        am[B // 2:, T * 3 // 4:] = 0  # half the batch padded, as real batches are
        with torch.no_grad():
            torch.testing.assert_close(ours(ids, am)[am.bool()], hf(ids, attention_mask=am).last_hidden_state[am.bool()],
                                       atol=1e-4, rtol=1e-4)

        def ours_inf(ids=ids, am=am):
            with torch.inference_mode():
                ours(ids, am)

        def hf_inf(ids=ids, am=am):
            with torch.inference_mode():
                hf(ids, attention_mask=am)

        rows.append(row("bert", f"BERT inference (MiniLM-L6, B={B} T={T})", "ours Bert", ours_inf,
                        "BertModel (same checkpoint)", hf_inf))
    return rows


def bench_generate(dev, args):
    s = size("gen")
    cfg = next(iter(size("gpt").values()))
    ours, hf = _gpt_pair(cfg, dev)
    ours.eval(), hf.eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, cfg["vocab_size"], (1, s["prompt"]), generator=g).to(dev)
    am = torch.ones_like(prompt)
    n = s["new"]

    def ours_cache():
        return generate(ours, prompt, n, use_cache=True)

    def ours_nocache():
        return generate(ours, prompt, n, use_cache=False)

    def hf_gen():
        with torch.no_grad():
            return hf.generate(prompt, attention_mask=am, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               num_beams=1)

    a, b, c = ours_cache(), ours_nocache(), hf_gen()
    if not (torch.equal(a, b) and torch.equal(a, c)):
        raise AssertionError(f"greedy decodings differ: ours cache {a.tolist()}, no cache {b.tolist()}, hf {c.tolist()}")
    shape = f"{cfg['n_layer']}L d={cfg['n_embd']}, prompt {s['prompt']} + {n} new, batch 1; identical tokens"
    return [row("generate", f"greedy tok/s, KV cache vs HF generate ({shape})", "ours generate(use_cache=True)",
                ours_cache, "GPT2LMHeadModel.generate", hf_gen, "", unit="tok/s", per_call=n),
            row("generate", f"greedy tok/s, KV cache vs no cache ({shape})", "ours generate(use_cache=True)",
                ours_cache, "ours generate(use_cache=False)", ours_nocache,
                "no cache recomputes the whole prefix for every new token", unit="tok/s", per_call=n)]


def bench_bf16(dev, args):
    cfg = size("bf16")
    torch.manual_seed(0)
    model = GPT(**{k: v for k, v in cfg.items() if k != "B"}).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg["vocab_size"], (cfg["B"], cfg["block_size"] + 1)).to(dev)
    V = cfg["vocab_size"]

    def step(bf16: bool):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x[:, :-1])
        F.cross_entropy(logits.reshape(-1, V).float(), x[:, 1:].reshape(-1)).backward()
        opt.step()

    flags = cpu_flags() or frozenset()
    native = (torch.cuda.is_bf16_supported() if dev.type == "cuda"
              else any(f in flags for f in ("avx512_bf16", "amx_bf16", "bf16")))
    fast = helpers.bf16_fast(dev)
    note = (f"native bf16: {'yes' if native else 'no'} ({'GPU' if dev.type == 'cuda' else 'CPU flags avx512_bf16/amx_bf16'}); "
            f"bf16_fast={fast}" + ("" if native else "; without native bf16 the matmuls take a slow emulated path"))
    shape = f"{cfg['n_layer']}L d={cfg['n_embd']}, B={cfg['B']} T={cfg['block_size']}, AdamW"
    return [row("bf16", f"train step, bf16 autocast vs fp32 ({shape})", "bf16 autocast", lambda: step(True),
                "fp32", lambda: step(False), note)]


class _Positional(nn.Module):
    """``model(input_ids, attention_mask)`` with exactly two positional inputs, for the ONNX exporter."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


def bench_teacher(dev, args):
    try:
        from helpers.teacher import load_teacher
        teacher, _ = load_teacher(train_if_missing=False, verbose=False)
    except (FileNotFoundError, OSError) as e:
        return f"no cached chapter-10 teacher ({e}); build it with `make data` (python -m helpers.teacher)"
    teacher = teacher.eval().cpu()  # int8 dynamic quantization and ONNX Runtime (CPU provider) run on the CPU
    B, T = size("teacher_batch"), size("bert_seq")
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(1000, 30000, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(teacher), {nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        ref, q = teacher(ids, am), int8(ids, am)
    agree = float((ref.argmax(-1) == q.argmax(-1)).float().mean())

    def fp32():
        with torch.inference_mode():
            teacher(ids, am)

    def i8():
        with torch.inference_mode():
            int8(ids, am)

    shape = f"fine-tuned MiniLM SST-2 classifier, B={B} T={T}, CPU"
    rows = [row("teacher", f"inference, dynamic int8 vs fp32 ({shape})", "torch int8 (quantize_dynamic)", i8,
                "torch fp32", fp32, f"int8 and fp32 predictions agree on {agree:.0%} of the batch")]
    try:
        import onnxruntime as ort
    except ImportError as e:
        print(f"  skip ONNX Runtime row: {e}")
        return rows
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        path = Path(tmp) / "teacher.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Positional(teacher), (ids, am), str(path), dynamo=False, opset_version=17,
                              input_names=["input_ids", "attention_mask"], output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}})
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = torch.get_num_threads(), 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": am.numpy()}
    np.testing.assert_allclose(sess.run(None, feed)[0], ref.numpy(), atol=1e-4, rtol=1e-3)
    rows.append(row("teacher", f"inference, ONNX Runtime vs PyTorch fp32 ({shape})", "onnxruntime fp32",
                    lambda: sess.run(None, feed), "torch fp32", fp32, f"onnxruntime {ort.__version__}, same outputs"))
    return rows


def _peak_bytes(fn, dev) -> int:
    """Peak memory allocated while ``fn()`` runs: CUDA's allocator statistics, or on the CPU the running sum of
    torch.profiler's per-op allocations (at op granularity; bytes above what was allocated before the call)."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        fn()
    events = sorted(p.events(), key=lambda e: e.time_range.start)  # ops' own allocations, and frees between ops
    cur = peak = 0
    for e in events:
        cur += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def _slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def bench_scaling(dev, args, out_dir: Path):
    seqs = size("scaling")
    B, H, d = 1, 4, 64
    pts = []
    for T in seqs:
        q, k, v = (torch.randn(B, H, T, d, device=dev) for _ in range(3))
        mask = causal_mask(T, dev)

        def ours(q=q, k=k, v=v, mask=mask):
            with torch.no_grad():
                scaled_dot_product_attention(q, k, v, mask)

        def lib(q=q, k=k, v=v):
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True)

        a, b = measure(ours, "ours"), measure(lib, "fused")
        pts.append({"T": T, "ours_ms": a["median_ms"], "fused_ms": b["median_ms"],
                    "ours_peak_mib": _peak_bytes(ours, dev) / 2**20, "fused_peak_mib": _peak_bytes(lib, dev) / 2**20})
    fit = [p for p in pts if p["T"] >= seqs[len(seqs) // 2 - 1]] if len(seqs) > 3 else pts  # the large-T half
    T_ = [p["T"] for p in fit]
    exps = {"ours_time": _slope(T_, [p["ours_ms"] for p in fit]), "fused_time": _slope(T_, [p["fused_ms"] for p in fit]),
            "ours_mem": _slope(T_, [max(p["ours_peak_mib"], 1e-6) for p in fit]),
            "fused_mem": _slope(T_, [max(p["fused_peak_mib"], 1e-6) for p in fit])}
    png = out_dir / "scaling.png"
    helpers.set_style()
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    Ts = [p["T"] for p in pts]
    ax1.loglog(Ts, [p["ours_ms"] for p in pts], "o-", label=f"本書實作 (斜率 {exps['ours_time']:.2f})")
    ax1.loglog(Ts, [p["fused_ms"] for p in pts], "s-", label=f"融合核心 (斜率 {exps['fused_time']:.2f})")
    ax1.set_xlabel("序列長度 T")
    ax1.set_ylabel("前向時間 (毫秒)")
    ax1.set_title("注意力時間")
    ax1.legend(fontsize=8)
    ax2.loglog(Ts, [max(p["ours_peak_mib"], 1e-3) for p in pts], "o-", label=f"本書實作 (斜率 {exps['ours_mem']:.2f})")
    ax2.loglog(Ts, [max(p["fused_peak_mib"], 1e-3) for p in pts], "s-", label=f"融合核心 (斜率 {exps['fused_mem']:.2f})")
    ax2.set_xlabel("序列長度 T")
    ax2.set_ylabel("峰值記憶體 (MiB)")
    ax2.set_title("注意力峰值記憶體")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=72)
    plt.close(fig)
    last = pts[-1]
    r = {"bench": "scaling", "name": f"attention fwd at T={last['T']} (B={B} H={H} d={d}, causal)",
         "ours": "ours scaled_dot_product_attention", "ours_ms": last["ours_ms"], "ours_iqr_ms": None,
         "baseline": "F.scaled_dot_product_attention", "baseline_ms": last["fused_ms"], "baseline_iqr_ms": None,
         "ratio": last["fused_ms"] / last["ours_ms"],
         "note": (f"log-log slope over T={T_[0]}..{T_[-1]}: time {exps['ours_time']:.2f} (ours) vs "
                  f"{exps['fused_time']:.2f} (fused), peak memory {exps['ours_mem']:.2f} vs {exps['fused_mem']:.2f}; "
                  f"peak {last['ours_peak_mib']:.0f} vs {last['fused_peak_mib']:.0f} MiB"),
         "_fns": None}
    return [r], {"points": pts, "exponents": exps, "fit_T": T_, "plot": png.name}


# --------------------------------------------------------------------------- output

def machine() -> dict:
    env = environment_report(packages=("torch", "transformers", "onnxruntime"))
    flags = cpu_flags() or frozenset()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "bf16", "asimd")
           if f in flags]
    return {"cpu_model": env["cpu_model"], "cpu_cores": env["cpu_cores"], "torch_threads": env["torch_threads"],
            "isa": " ".join(isa) or "-", "gpu": env["gpu"], "device": env["device"],
            "bf16_fast": env["bf16_fast"], "versions": env.get("packages", {})}


def _ms(v) -> str:
    return "–" if v is None else (f"{v:.3g}" if v < 100 else f"{v:.0f}")


def _cell(r: dict, side: str) -> str:
    if f"{side}_tok_s" in r:
        return f"{r[f'{side}_tok_s']:.0f} tok/s"
    iqr = r.get(f"{side}_iqr_ms")
    return f"{_ms(r[f'{side}_ms'])} ms" + ("" if not iqr else f" ± {_ms(iqr)}")  # IQR 0: a single timed block


def _note(r: dict) -> str:
    """The row's note, plus "within noise" when ours is slower by less than the larger IQR of the two sides."""
    gap, iqr = r["ours_ms"] - r["baseline_ms"], max(r.get("ours_iqr_ms") or 0, r.get("baseline_iqr_ms") or 0)
    if 0 < gap < iqr and "profile" not in r["note"]:
        return ((r["note"] + "; ") if r["note"] else "") + (
            f"slower by {gap:.2g} ms, less than the IQR ({iqr:.2g} ms): no difference at this scale")
    return r["note"]


def table_md(data: dict) -> str:
    m = data["machine"]
    vers = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    lines = [f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores ({m['torch_threads']} torch threads), ISA: {m['isa']}; "
             f"GPU: {m['gpu'] or 'none'}; device `{m['device']}`; {vers}. "
             f"{'BENCH_QUICK run. ' if data['quick'] else ''}Median ± IQR of `torch.utils.benchmark` blocked_autorange; "
             f"**ratio = baseline time ÷ ours** (> 1: ours is faster).", "",
             "| benchmark | ours | time | baseline | time | ratio | note |", "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['name']} | {r['ours']} | {_cell(r, 'ours')} | {r['baseline']} | {_cell(r, 'baseline')} | "
                     f"{r['ratio']:.2f}× | {_note(r)} |")
    for name, why in data.get("skipped", {}).items():
        lines.append(f"| {name} | skipped | | | | | {why} |")
    if data.get("scaling"):
        lines += ["", f"![attention time and peak memory vs sequence length](data/bench/{data['scaling']['plot']})"]
    return "\n".join(lines)


def update_readme(readme: Path, data: dict) -> bool:
    """Write the table between the markers (inserting the section before "## On a GPU" the first time)."""
    text = readme.read_text(encoding="utf-8")
    block = f"{START}\n{table_md(data)}\n{END}"
    if START in text and END in text:
        new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    elif README_ANCHOR in text:
        new = text.replace(README_ANCHOR, SECTION + block + "\n\n" + README_ANCHOR, 1)
    else:
        raise ValueError(f"{readme} has neither the {START} … {END} markers nor a '{README_ANCHOR}' heading to "
                         f"put the performance section before")
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


def _op_ms(fn, n: int = 3) -> dict[str, float]:
    """Self CPU time (ms per call) of each aten op in ``fn()``, from torch.profiler (outside the timed path)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(n):
            fn()
    return {e.key: e.self_cpu_time_total / 1000 / n for e in p.key_averages()}


def explain_slow(rows: list[dict], threshold: float = 0.95) -> None:
    """For each row where ours is slower than the baseline (ratio < ``threshold``), profile both sides once and add
    to its note the ops where ours spends the most extra time (the measured reason)."""
    for r in rows:
        if not r.get("_fns") or r["ratio"] >= threshold:
            continue
        ours, base = (_op_ms(fn) for fn in r["_fns"])
        extra = sorted(((ours.get(k, 0.0) - base.get(k, 0.0), k) for k in set(ours) | set(base)), reverse=True)
        top = [f"{k} +{d:.2g} ms" for d, k in extra[:3] if d > 0]
        r["note"] = (r["note"] + "; " if r["note"] else "") + "profile, ours minus baseline per call: " + ", ".join(top)
        r["profile_extra_ms"] = {k: round(d, 4) for d, k in extra[:3] if d > 0}


def profile_rows(rows: list[dict]) -> None:
    """torch.profiler summary of both sides of each timed row (outside the timed path): where the time goes."""
    from torch.profiler import ProfilerActivity, profile
    for r in rows:
        if not r.get("_fns"):
            continue
        for label, fn in zip((r["ours"], r["baseline"]), r["_fns"]):
            fn()
            with profile(activities=[ProfilerActivity.CPU]) as p:
                for _ in range(3):
                    fn()
            print(f"\n== profile: {r['name']} · {label}")
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=BENCH_NAMES, metavar="NAME",
                    help=f"run only these benchmarks (choices: {', '.join(BENCH_NAMES)})")
    ap.add_argument("--gpt-seq", type=int, default=None,
                    help="sequence length of the GPT fwd+bwd rows (1 .. the models' block_size)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for bench.json and scaling.png (default data/bench/)")
    ap.add_argument("--readme", nargs="?", const=ROOT / "README.md", type=Path, default=None,
                    help="only rewrite README's performance section (or this file's) from OUT/bench.json")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler summary of each row")
    a = ap.parse_args(argv)
    if a.gpt_seq is not None:
        limit = min(c["block_size"] for c in size("gpt").values())
        if not 1 <= a.gpt_seq <= limit:
            ap.error(f"--gpt-seq {a.gpt_seq} does not fit the benchmark GPTs: choose 1 .. {limit} "
                     f"(their block_size{' in BENCH_QUICK mode' if QUICK else ''})")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.readme is not None:
        src = a.out / "bench.json"
        if not src.exists():
            print(f"no {src}: run `python scripts/bench.py` first", file=sys.stderr)
            return 1
        changed = update_readme(a.readme, json.loads(src.read_text(encoding="utf-8")))
        print(f"{a.readme} " + ("updated" if changed else "already up to date"))
        return 0
    t0 = time.perf_counter()
    dev = helpers.get_device()
    a.out.mkdir(parents=True, exist_ok=True)
    data = {"quick": QUICK, "machine": machine(), "rows": [], "skipped": {}, "scaling": None}
    m = data["machine"]
    print(f"machine: {m['cpu_model']} · {m['cpu_cores']} cores ({m['torch_threads']} torch threads) · ISA {m['isa']} "
          f"· GPU {m['gpu'] or 'none'} · device {m['device']}" + (" · BENCH_QUICK" if QUICK else ""), flush=True)
    for name in a.only or BENCH_NAMES:
        t = time.perf_counter()
        fn = globals()[f"bench_{name}"]
        got = fn(dev, a, a.out) if name == "scaling" else fn(dev, a)
        if isinstance(got, str):
            data["skipped"][name] = got
            print(f"  skip {name}: {got}", flush=True)
            continue
        if name == "scaling":
            got, data["scaling"] = got
        data["rows"] += got
        print(f"  {name}: {len(got)} rows in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    explain_slow(data["rows"])
    print(f"  profiled the rows where ours is slower in {time.perf_counter() - t:.1f} s", flush=True)
    if a.profile:
        profile_rows(data["rows"])
    data["seconds"] = round(time.perf_counter() - t0, 1)
    for r in data["rows"]:
        r.pop("_fns", None)
        for k, v in list(r.items()):
            if isinstance(v, float):
                r[k] = float(f"{v:.4g}")
    (a.out / "bench.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(table_md(data))
    print(f"\nwrote {a.out / 'bench.json'} in {data['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
