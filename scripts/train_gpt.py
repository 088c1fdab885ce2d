#!/usr/bin/env python3
"""Train a small GPT (helpers.gpt.GPT) on Tiny Shakespeare (characters) or a token file. One file for every scale:

    python scripts/train_gpt.py --steps 200                                    # one process (laptop)
    torchrun --nproc_per_node 2 scripts/train_gpt.py --steps 200               # DDP on one machine
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29500 --rdzv-id gpt1 scripts/train_gpt.py ...     # on each of 2 machines
    python scripts/train_gpt.py --steps 200 --resume                           # continue from OUT_DIR/last.pt

Every optimizer step uses a fixed *global* batch drawn from (seed, step); each rank takes its slice, so the data
position is the step number and any world size sees the same examples. Checkpoints (model, optimizer, scheduler,
GradScaler, step, RNG states of every rank) are written atomically every --save-every steps and read back with
weights_only=True; a resumed run continues bit-identically. Precision follows the hardware (--precision auto):
bf16 autocast where it is fast, fp16 + GradScaler on older GPUs, float32 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from helpers.dist import amp_policy, check_world, init_from_env
from helpers.gpt import GPT, CharTokenizer, eval_loss
from helpers.train import load_checkpoint, save_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Train a char-level GPT; single process, torchrun DDP or multi-node.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", default=None, help="a .txt file (characters) or a .pt file of a 1-D LongTensor of token "
                    "ids; default: Tiny Shakespeare")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps (also the length of the LR schedule)")
    ap.add_argument("--batch", type=int, default=32, help="global batch in sequences (a multiple of world size * accum)")
    ap.add_argument("--accum", type=int, default=1, help="gradient-accumulation micro-steps per optimizer step")
    ap.add_argument("--block", type=int, default=64, help="context length")
    ap.add_argument("--n-layer", type=int, default=2, help="Transformer blocks")
    ap.add_argument("--n-head", type=int, default=4, help="attention heads")
    ap.add_argument("--n-embd", type=int, default=64, help="model width")
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout probability")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW; warm-up, then cosine decay)")
    ap.add_argument("--warmup", type=int, default=10, help="linear warm-up steps")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="auto: bf16 where native, fp16 + GradScaler on older GPUs, else fp32")
    ap.add_argument("--seed", type=int, default=0, help="seeds the weights and the batches")
    ap.add_argument("--out-dir", default="runs/train_gpt", help="folder for last.pt and log.json")
    ap.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (0: only at the end)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this step (simulates an interruption)")
    ap.add_argument("--log-every", type=int, default=10, help="print the loss every N steps")
    ap.add_argument("--eval-batches", type=int, default=8, help="validation batches of 64 windows at the end")
    args = ap.parse_args(argv)
    for k in ("steps", "batch", "accum", "block", "n_layer", "n_head", "n_embd", "log_every", "eval_batches"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.save_every < 0:
        ap.error("--save-every must be >= 0")
    return args


def load_tokens(path: str | None) -> tuple[torch.Tensor, int]:
    """(1-D token ids, vocab size) from a .pt tensor, a .txt file or Tiny Shakespeare."""
    if path is not None and path.endswith(".pt"):
        ids = torch.load(path, weights_only=True)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point():
            raise ValueError(f"{path} must hold a 1-D integer tensor of token ids")
        return ids.long(), int(ids.max()) + 1
    if path is None:
        from helpers.data import load_tiny_shakespeare
        text = load_tiny_shakespeare()
    else:
        text = Path(path).read_text(encoding="utf-8")
    tok = CharTokenizer(text)
    return torch.tensor(tok.encode(text)), tok.vocab_size


def global_batch(data: torch.Tensor, step: int, args) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed global batch of ``step``: the same for every world size and after a resume."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    starts = torch.randint(len(data) - args.block - 1, (args.batch,), generator=g)
    chunk = data[starts[:, None] + torch.arange(args.block + 1)]
    return chunk[:, :-1], chunk[:, 1:]


def lr_factor(step: int, args) -> float:
    if step < args.warmup:
        return (step + 1) / args.warmup
    return 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, args.steps - args.warmup)))


def rng_states() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def main(argv=None) -> dict:
    args = parse_args(argv)
    rank, world, device = init_from_env()
    check_world(world, rank=rank, batch=args.batch)
    check_world(world * args.accum, batch=args.batch)
    torch.manual_seed(args.seed + rank)  # dropout differs per rank, as on a real cluster
    random.seed(args.seed + rank)
    data, vocab = load_tokens(args.data)
    n_val = len(data) // 10
    train, val = data[:-n_val], data[-n_val:]
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = GPT(vocab_size=vocab, block_size=args.block, n_layer=args.n_layer, n_head=args.n_head,
                n_embd=args.n_embd, dropout=args.dropout).to(device)
    torch.manual_seed(args.seed + rank)
    dtype, use_scaler = amp_policy(device, args.precision)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args))
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    out, start, log = Path(args.out_dir), 0, []
    if args.resume:
        ck = load_checkpoint(out / "last.pt", map_location=device)
        if ck["world_size"] != world:
            raise ValueError(f"checkpoint was written by {ck['world_size']} processes, this run has {world}; "
                             "resume with the same world size (or drop --resume)")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        set_rng_states(ck["rng"][rank])
        start, log = ck["step"], ck["log"]

    def save(step: int) -> None:
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, rng_states())
        else:
            states = [rng_states()]
        if rank == 0:
            save_checkpoint(out / "last.pt", model=model.state_dict(), optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(), scaler=scaler.state_dict(), step=step, rng=states,
                            world_size=world, log=log, args=vars(args))
        if world > 1:
            dist.barrier()

    local, micro = args.batch // world, args.batch // world // args.accum
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    t0, end = time.perf_counter(), min(args.steps, args.stop_after or args.steps)
    model.train()
    for step in range(start, end):
        x, y = (t[rank * local:(rank + 1) * local].to(device) for t in global_batch(train, step, args))
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(args.accum):
            sync = i == args.accum - 1 or world == 1
            with contextlib.nullcontext() if sync else ddp.no_sync(), autocast:
                logits = ddp(x[i * micro:(i + 1) * micro])
                loss = F.cross_entropy(logits.float().flatten(0, 1), y[i * micro:(i + 1) * micro].flatten())
            scaler.scale(loss / args.accum).backward()
            total += loss.item() / args.accum
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        if world > 1:  # the loss of the whole global batch, for the log
            t = torch.tensor([total], device=device)
            dist.all_reduce(t)
            total = t.item() / world
        log.append(total)
        if rank == 0 and ((step + 1) % args.log_every == 0 or step + 1 == end):
            print(f"step {step + 1:5d}/{args.steps}  loss {total:.4f}  lr {sched.get_last_lr()[0]:.2e}", flush=True)
        if args.save_every and (step + 1) % args.save_every == 0:
            save(step + 1)
    seconds = time.perf_counter() - t0
    save(end)
    summary = {"world_size": world, "steps_done": end, "train_loss": log[-1] if log else None, "seconds": seconds,
               "precision": str(dtype).removeprefix("torch."), "device": str(device)}
    if rank == 0:
        if end == args.steps:
            summary["val_loss"] = eval_loss(model, val, args.block, 64, args.eval_batches)
        (out / "log.json").write_text(json.dumps({**summary, "losses": log}))
        print("summary " + json.dumps(summary), flush=True)
    if world > 1:
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
