#!/usr/bin/env python3
"""Chapter 02's char GPT trained from the same seed on the same batches in float32 and under bf16 autocast.

README's "precision paths" section quotes this script's output: how much the bf16 path (CPUs with native bf16,
GPUs) changes the numbers a reader sees, and how fast each path is on this machine. Forced bf16 runs even where
``helpers.bf16_fast`` says no (slowly there, which is the point of the timing column).

    python scripts/precision_paths.py [--steps 200]
"""
from __future__ import annotations

import argparse
import math

import torch

import helpers
from helpers.data import load_tiny_shakespeare
from helpers.gpt import GPT, CharTokenizer, eval_loss, lm_loss, random_batches


def run(data: torch.Tensor, val: torch.Tensor, vocab: int, steps: int, amp: bool, seed: int = 0) -> tuple[float, float]:
    """(validation loss, seconds) after ``steps`` of chapter 02's recipe (3 x 96 GPT, batch 32, warm-up + cosine)."""
    g = helpers.seed_everything(seed)
    model = GPT(vocab_size=vocab, block_size=64, n_layer=3, n_head=4, n_embd=96)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, betas=(0.9, 0.99), weight_decay=0.0)
    lr = lambda s: min(1.0, (s + 1) / (0.03 * steps)) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    hist = helpers.fit(model, random_batches(data, 64, 32, g), lm_loss, opt, steps=steps, grad_clip=1.0,
                       scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lr), autocast=amp, progress=False)
    return eval_loss(model, val, 64, 256), hist["seconds"][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps of each run (default 200)")
    steps = ap.parse_args().steps
    if steps < 1:
        raise SystemExit("--steps must be >= 1")
    text = load_tiny_shakespeare()
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text))
    n = int(0.9 * len(ids))
    env = helpers.environment_report()
    print(f"CPU {env['cpu_model']} ({env['cpu_isa']}), bf16 fast here: {env['bf16_fast']}; {steps} steps each")
    rows = {amp: run(ids[:n], ids[n:], tok.vocab_size, steps, amp) for amp in (False, True)}
    for amp, (loss, sec) in rows.items():
        print(f"{'bf16 autocast' if amp else 'float32':14s} validation loss {loss:.4f}  {sec:6.1f} s")
    print(f"|difference| {abs(rows[True][0] - rows[False][0]):.4f} nats/char; "
          f"bf16 / fp32 time {rows[True][1] / rows[False][1]:.2f}x")


if __name__ == "__main__":
    main()
