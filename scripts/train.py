#!/usr/bin/env python3
"""Chapter 11's training script: one config file, one process or torchrun, TensorBoard, checkpoints that survive
a SIGKILL.

    python scripts/train.py run.json --out-dir runs/gpt                            # one process
    torchrun --nproc_per_node 2 scripts/train.py run.json --out-dir runs/gpt       # DDP on one machine
    python scripts/train.py run.json --out-dir runs/gpt --resume                   # continue where it stopped
    tensorboard --logdir runs                                                      # watch it live

``run.json`` holds the fields of ``helpers.pipeline.RunConfig``: ``task`` "lm" (a GPT on a flat token file) or
"cls" (a Transformer classifier on padded sequences with labels), sizes, batch, schedule, precision, and how often
to log, evaluate and checkpoint. Data are token files written by ``helpers.pipeline.write_token_file``.

Each checkpoint holds the model, optimizer, scheduler, GradScaler, step, the RNG states of every rank and the data
loader's position in its epoch, so ``--resume`` continues bit-identically. ``--resume-level model|rng`` restores
less, to show what each part is for (chapter 11.4); never use them for real work.
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

from helpers.dist import amp_policy, init_from_env
from helpers.pipeline import RESUME_LEVELS, Checkpoints, ResumableLoader, RunConfig, build_model, open_token_file


class Data:
    """Examples of one token file: windows of block + 1 tokens (lm) or rows with their labels (cls)."""

    def __init__(self, prefix: str, cfg: RunConfig):
        self.tokens, self.meta = open_token_file(prefix)
        self.task, self.block = cfg.task, cfg.block
        if cfg.task == "lm":
            if self.tokens.ndim != 1:
                raise ValueError(f"task 'lm' needs a flat (1-D) token file, {prefix} has shape {self.tokens.shape}")
            self.n = (len(self.tokens) - 1) // cfg.block
        else:
            if self.tokens.ndim != 2 or "labels" not in self.meta or "pad_id" not in self.meta:
                raise ValueError(f"task 'cls' needs a 2-D token file with 'labels' and 'pad_id' in its metadata: {prefix}")
            self.labels = torch.tensor(self.meta["labels"])
            self.n = len(self.tokens)

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.task == "lm":
            rows = torch.stack([torch.from_numpy(self.tokens[i * self.block:i * self.block + self.block + 1]
                                                 .astype("int64")) for i in idx.tolist()])
            return rows[:, :-1], rows[:, 1:]
        return torch.from_numpy(self.tokens[idx.numpy()].astype("int64")), self.labels[idx]


def loss_of(model, task: str, x, y) -> torch.Tensor:
    logits = model(x)
    if task == "lm":
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    return F.cross_entropy(logits.float(), y)


@torch.no_grad()
def evaluate(model, data: Data, cfg: RunConfig, device) -> dict:
    """lm: mean loss on eval_batches x batch validation windows spread evenly over the file; cls: loss and accuracy
    on all rows."""
    was = model.training
    model.eval()
    n = min(data.n, cfg.eval_batches * cfg.batch) if cfg.task == "lm" else data.n
    rows = torch.linspace(0, data.n - 1, n).long() if cfg.task == "lm" else torch.arange(n)
    total, correct, bs = 0.0, 0, cfg.batch if cfg.task == "lm" else 256
    for i in range(0, n, bs):
        x, y = data.get(rows[i:i + bs])
        logits = model(x.to(device)).float()
        if cfg.task == "lm":
            total += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum").item() / cfg.block
        else:
            total += F.cross_entropy(logits, y.to(device), reduction="sum").item()
            correct += (logits.argmax(-1).cpu() == y).sum().item()
    model.train(was)
    out = {"val_loss": total / n}
    if cfg.task == "cls":
        out["val_acc"] = correct / n
    return out


@torch.no_grad()
def sample(model, data: Data, cfg: RunConfig, device, step: int, n_new: int = 48) -> str | None:
    """A short continuation of the first validation window's opening, drawn with its own generator (the
    training RNG is left untouched, so sampling does not change the run)."""
    path = data.meta.get("tokenizer")
    if path is None or not Path(path).exists():
        return None
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(path)
    g = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
    was = model.training
    model.eval()
    ids = torch.from_numpy(data.tokens[:16].astype("int64"))[None].to(device)
    for _ in range(n_new):
        logits = model(ids[:, -cfg.block:])[:, -1].float()
        v, _ = logits.topk(20)
        logits[logits < v[:, -1:]] = -float("inf")
        ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1, generator=g)], 1)
    model.train(was)
    return tok.decode(ids[0].tolist())


def lr_factor(step: int, cfg: RunConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Train a GPT (task lm) or a classifier (task cls) from a config file; "
                                 "one process or torchrun; checkpoints that resume bit-identically.")
    ap.add_argument("config", help="JSON file with the fields of helpers.pipeline.RunConfig")
    ap.add_argument("--out-dir", required=True, help="run folder: checkpoints/, tb/ (TensorBoard), summary.json")
    ap.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint in --out-dir")
    ap.add_argument("--resume-level", default="full", choices=RESUME_LEVELS,
                    help="what a resume restores (teaching only): model = model/optimizer/scheduler/step; "
                         "rng = + RNG states; full = + the data loader's position (the only exact one)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = RunConfig.load(args.config)
    rank, world, device = init_from_env()
    cfg.validate(world_size=world)
    out = Path(args.out_dir)
    ckpts = Checkpoints(out / "checkpoints", keep_last=cfg.keep_last, log=print if rank == 0 else lambda *a: None)
    resume = None
    if args.resume:  # before anything is built: a wrong folder or config fails in a second, not after training
        resume = ckpts.latest(cfg, map_location=device)
        if resume["world_size"] != world:
            raise ValueError(f"{resume['path']} was written by {resume['world_size']} processes, this run has "
                             f"{world}; resume with the same number of processes")

    train, val = Data(cfg.train_data, cfg), Data(cfg.val_data, cfg)
    if cfg.task == "lm" and train.meta["vocab_size"] != val.meta["vocab_size"]:
        raise ValueError("train_data and val_data were tokenised with different vocabularies")
    torch.manual_seed(cfg.seed)                   # the same initial weights on every rank
    model = build_model(cfg, train.meta).to(device)
    torch.manual_seed(cfg.seed + 1 + rank)        # then each rank its own dropout stream
    random.seed(cfg.seed + rank)
    loader = ResumableLoader(train.n, cfg.batch, seed=cfg.seed)
    dtype, use_scaler = amp_policy(device, cfg.precision)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    start, log = 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        start, log = resume["step"], resume["log"]
        if args.resume_level in ("rng", "full"):
            set_rng_state(resume["rng"][rank])
        if args.resume_level == "full":
            loader.load_state_dict(resume["loader"])
        if rank == 0:
            print(f"resumed from {Path(resume['path']).name} at step {start} (restored: {args.resume_level})",
                  flush=True)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if start else None, flush_secs=5)
        cfg.save(out / "config.json")

    def save(step: int) -> None:
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if rank == 0:
            ckpts.save(step, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                       scaler=scaler.state_dict(), rng=states, loader=loader.state_dict(), world_size=world,
                       log=log, config=cfg.to_dict())
        if world > 1:
            dist.barrier()

    local = cfg.batch // world
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("wpe."))  # 6N excludes positions
    tokens_per_step = cfg.batch * (cfg.block if cfg.task == "lm" else train.meta["shape"][1])
    train_seconds, window_t, window_steps, evals = 0.0, 0.0, 0, {}
    model.train()
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        idx = loader.next()[rank * local:(rank + 1) * local]
        x, y = (t.to(device) for t in train.get(idx))
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_of(ddp, cfg.task, x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        scaler.step(opt)
        scaler.update()
        sched.step()
        total = loss.detach()
        if world > 1:  # the mean loss over the global batch, for the log
            dist.all_reduce(total)
            total = total / world
        log.append(total.item())
        dt = time.perf_counter() - t0
        train_seconds, window_t, window_steps = train_seconds + dt, window_t + dt, window_steps + 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            tps = window_steps * tokens_per_step / window_t
            if rank == 0:
                print(f"step {done:5d}/{cfg.steps}  loss {log[-1]:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                      f"grad_norm {gnorm:.3f}  tokens/s {tps:,.0f}  epoch {loader.epoch}", flush=True)
                writer.add_scalar("train/loss", log[-1], done)
                writer.add_scalar("train/lr", sched.get_last_lr()[0], done)
                writer.add_scalar("train/grad_norm", gnorm, done)
                writer.add_scalar("train/tokens_per_s", tps, done)
            window_t, window_steps = 0.0, 0
        if done % cfg.eval_every == 0 or done == cfg.steps:
            if rank == 0:
                evals = evaluate(model, val, cfg, device)
                for k, v in evals.items():
                    writer.add_scalar(f"val/{k.removeprefix('val_')}", v, done)
                print("eval " + "  ".join(f"{k} {v:.4f}" for k, v in evals.items()), flush=True)
            if world > 1:
                dist.barrier()
        if rank == 0 and cfg.task == "lm" and cfg.sample_every and done % cfg.sample_every == 0:
            text = sample(model, val, cfg, device, done)
            if text is not None:
                writer.add_text("sample", text, done)
        if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
            save(done)
    result = {"world_size": world, "start_step": start, "steps_done": cfg.steps, "train_loss": log[-1],
              "train_seconds": round(train_seconds, 3), "tokens_per_s": round((cfg.steps - start) * tokens_per_step
                                                                             / max(train_seconds, 1e-9)),
              "params": n_params, "precision": str(dtype).removeprefix("torch."), "device": str(device), **evals}
    if rank == 0:
        writer.close()
        (out / "summary.json").write_text(json.dumps({**result, "losses": log}))
        print("summary " + json.dumps(result), flush=True)
    if world > 1:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
