#!/usr/bin/env python3
"""Chapter 07's distributed demos in one launch (torchrun start-up costs seconds, so they share it):

    torchrun --nproc_per_node 2 scripts/dist_demo.py --out results.json

1. collectives (all_reduce, all_gather, broadcast, reduce_scatter) and the environment torchrun sets;
2. DDP + DistributedSampler vs single-process training on the same global batches (float64 and float32);
3. ZeRO stage 1 (ZeroRedundancyOptimizer) vs plain DDP, with optimizer-state bytes per rank;
4. gradient accumulation under DDP with and without ``no_sync()`` (all-reduce calls and bytes counted);
5. tensor parallelism written by hand (MLP, attention) vs the unsplit modules, and vs torch.distributed.tensor;
6. a 2-stage GPipe pipeline (send/recv of activations and gradients) vs the unsplit model's gradients.

Each rank computes its own single-process reference from the same seed, so every comparison is against an
independent computation. Rank 0 writes all numbers to ``--out`` as JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from helpers.dist import ParallelAttention, ParallelMLP, check_world, init_from_env, make_data, make_mlp


def gather_lines(line: str) -> list[str]:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, line)
    return out


def collectives(rank: int, world: int) -> dict:
    env = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                          "MASTER_PORT", "GROUP_RANK")}
    x = torch.tensor([1.0, 2.0]) * (rank + 1)
    ar = x.clone()
    dist.all_reduce(ar)  # sum over ranks, result on every rank
    ag = [torch.zeros(2) for _ in range(world)]
    dist.all_gather(ag, x)  # every rank gets every rank's tensor
    bc = x.clone()
    dist.broadcast(bc, src=0)  # rank 0's tensor copied to all
    full = torch.arange(2.0 * world) + 10 * rank
    rs = torch.zeros(2)
    dist.reduce_scatter(rs, list(full.chunk(world)))  # sum over ranks, then rank r keeps chunk r
    line = (f"rank {rank}: x={x.tolist()} all_reduce={ar.tolist()} all_gather={torch.cat(ag).tolist()} "
            f"broadcast={bc.tolist()} reduce_scatter(in={full.tolist()})={rs.tolist()}")
    return {"env": gather_lines(json.dumps(env)), "lines": gather_lines(line)}


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def ddp_vs_single(rank: int, world: int, dtype: torch.dtype, steps: int, checks: list[int], batch: int,
                  seed: int) -> dict:
    """max |param_DDP - param_single| after each step in ``checks``; the same global batches in both."""
    check_world(world, rank=rank, batch=batch)
    torch.set_default_dtype(dtype)
    ds = make_data(batch * steps)
    model = DDP(make_mlp(seed))
    single = make_mlp(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt1 = torch.optim.SGD(single.parameters(), lr=0.05, momentum=0.9)
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    local = DataLoader(ds, batch_size=batch // world, sampler=sampler)
    # the same permutation as the sampler; rank r takes perm[r::world], so global batch t is perm[t*B:(t+1)*B]
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    full = DataLoader(torch.utils.data.Subset(ds, perm), batch_size=batch)
    diffs, t_ddp = {}, 0.0
    for step, ((x, y), (xg, yg)) in enumerate(zip(local, full), 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()  # DDP averages the gradients of the ranks' local means
        opt.step()
        t_ddp += time.perf_counter() - t0
        opt1.zero_grad()
        F.cross_entropy(single(xg), yg).backward()
        opt1.step()
        if step in checks:
            diffs[step] = max_diff(model.module, single)
    torch.set_default_dtype(torch.float32)
    return {"diffs": diffs, "ddp_seconds": t_ddp, "steps": steps}


def zero_vs_ddp(rank: int, world: int, steps: int, batch: int, seed: int) -> dict:
    torch.set_default_dtype(torch.float64)
    ds = make_data(batch * steps, seed=2)
    a, b = DDP(make_mlp(seed)), DDP(make_mlp(seed))
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-3)
    opt_b = ZeroRedundancyOptimizer(b.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-3)
    for t in range(steps):
        x, y = ds[t * batch + rank * (batch // world):t * batch + (rank + 1) * (batch // world)]
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()

    def state_bytes(states) -> int:
        return sum(v.numel() * v.element_size() for s in states for v in s.values() if torch.is_tensor(v) and v.dim())
    torch.set_default_dtype(torch.float32)
    return {"max_diff": max_diff(a.module, b.module),
            "adamw_bytes": gather_lines(state_bytes(opt_a.state.values())),
            "zero_bytes": gather_lines(state_bytes(opt_b.optim.state.values())),
            "param_bytes": sum(p.numel() * p.element_size() for p in a.parameters())}


def no_sync_demo(rank: int, world: int, accum: int, batch: int, seed: int) -> dict:
    """One optimizer step of ``accum`` micro-batches, all-reducing every micro-batch or only the last."""
    ds = make_data(batch * accum, seed=3)
    counts, grads = {}, {}
    for mode in ("every", "no_sync"):
        model = DDP(make_mlp(seed))
        calls = {"n": 0, "bytes": 0}

        def hook(state, bucket, calls=calls):
            calls["n"] += 1
            calls["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
            fut = dist.all_reduce(bucket.buffer() / world, async_op=True).get_future()
            return fut.then(lambda f: f.value()[0])
        model.register_comm_hook(None, hook)
        mb = batch // world // accum
        for i in range(accum):
            lo = i * batch + rank * (batch // world)
            x, y = ds[lo:lo + batch // world][0][:mb], ds[lo:lo + batch // world][1][:mb]
            last = i == accum - 1
            ctx = model.no_sync() if mode == "no_sync" and not last else torch.enable_grad()
            with ctx:
                (F.cross_entropy(model(x), y) / accum).backward()
        counts[mode] = dict(calls)
        grads[mode] = [p.grad.clone() for p in model.parameters()]
    diff = max((g1 - g2).abs().max().item() for g1, g2 in zip(grads["every"], grads["no_sync"]))
    return {"counts": counts, "grad_diff": diff}


def tensor_parallel(rank: int, world: int, seed: int) -> dict:
    torch.set_default_dtype(torch.float64)
    d, heads, T = 64, 4, 12
    check_world(world, rank=rank, heads=heads)
    torch.manual_seed(seed)
    fc1, fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
    mha = nn.MultiheadAttention(d, heads, batch_first=True)
    x = torch.randn(3, T, d)
    # reference: the unsplit modules, in this process
    x_ref = x.clone().requires_grad_()
    mlp_ref = nn.Sequential(fc1, nn.GELU(), fc2)
    y_mlp_ref = mlp_ref(x_ref)
    y_mlp_ref.square().sum().backward()
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    x_ref2 = x.clone().requires_grad_()
    y_att_ref = mha(x_ref2, x_ref2, x_ref2, attn_mask=causal, need_weights=False)[0]
    y_att_ref.square().sum().backward()
    # tensor parallel: each rank holds 1/world of the weights
    mlp = ParallelMLP(fc1, fc2, rank, world)
    x_tp = x.clone().requires_grad_()
    y_mlp = mlp(x_tp)
    y_mlp.square().sum().backward()
    qkv = nn.Linear(d, 3 * d)
    qkv.weight.data.copy_(mha.in_proj_weight)
    qkv.bias.data.copy_(mha.in_proj_bias)
    att = ParallelAttention(qkv, mha.out_proj, heads, rank, world)
    x_tp2 = x.clone().requires_grad_()
    y_att = att(x_tp2, causal=True)
    y_att.square().sum().backward()
    rows = slice(rank * 4 * d // world, (rank + 1) * 4 * d // world)
    res = {
        "mlp_out": (y_mlp - y_mlp_ref).abs().max().item(),
        "mlp_grad_x": (x_tp.grad - x_ref.grad).abs().max().item(),
        "mlp_grad_w1": (mlp.fc1.weight.grad - fc1.weight.grad[rows]).abs().max().item(),
        "mlp_grad_w2": (mlp.fc2.weight.grad - fc2.weight.grad[:, rows]).abs().max().item(),
        "att_out": (y_att - y_att_ref).abs().max().item(),
        "att_grad_x": (x_tp2.grad - x_ref2.grad).abs().max().item(),
        "att_grad_proj": (att.proj.weight.grad - mha.out_proj.weight.grad[:, rank * d // world:(rank + 1) * d // world]
                          ).abs().max().item(),
        "weights_per_rank": sum(p.numel() for p in mlp.parameters()), "weights_full": fc1.weight.numel()
        + fc1.bias.numel() + fc2.weight.numel() + fc2.bias.numel(),
    }
    # the built-in equivalent: DTensor's ColwiseParallel / RowwiseParallel on the same MLP
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    mesh = init_device_mesh("cpu", (world,))
    builtin = parallelize_module(copy.deepcopy(mlp_ref), mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    with torch.no_grad():
        y_builtin = builtin(x)
    res["builtin_vs_hand"] = (y_builtin - y_mlp).abs().max().item()
    torch.set_default_dtype(torch.float32)
    return {k: gather_lines(v) if k.startswith(("mlp", "att")) else v for k, v in res.items()}


def pipeline(rank: int, world: int, micro: int, seed: int) -> dict:
    """GPipe with 2 stages: rank 0 runs blocks 0-1, rank 1 blocks 2-3 and the loss."""
    if world != 2:
        raise ValueError(f"the pipeline demo has 2 stages; run it with --nproc_per_node 2, not {world}")
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)
    full = nn.Sequential(*(nn.Sequential(nn.Linear(32, 32), nn.Tanh()) for _ in range(4)), nn.Linear(32, 10))
    x, y = torch.randn(16, 32), torch.randint(0, 10, (16,))
    F.cross_entropy(full(x), y).backward()  # reference: the unsplit model, one batch
    stage = copy.deepcopy(full[:2] if rank == 0 else full[2:])
    stage.zero_grad()
    xs, ys = x.chunk(micro), y.chunk(micro)
    warm = torch.zeros(len(xs[0]), 32)  # open the connection first, so the timeline shows compute, not set-up
    dist.send(warm, dst=1) if rank == 0 else dist.recv(warm, src=0)
    dist.barrier()
    events, t0 = [], time.perf_counter()
    if rank == 0:
        outs = []
        for m in range(micro):  # all forwards ...
            t = time.perf_counter()
            outs.append(stage(xs[m]))
            events.append(("F", m, t - t0, time.perf_counter() - t0))
            dist.send(outs[-1].detach(), dst=1)
        for m in range(micro):  # ... then all backwards
            g = torch.empty_like(outs[m])
            dist.recv(g, src=1)
            t = time.perf_counter()
            outs[m].backward(g)
            events.append(("B", m, t - t0, time.perf_counter() - t0))
    else:
        acts, losses = [], []
        for m in range(micro):
            a = torch.empty(len(xs[m]), 32)
            dist.recv(a, src=0)
            t = time.perf_counter()
            acts.append(a.requires_grad_())
            losses.append(F.cross_entropy(stage(a), ys[m]) * len(ys[m]) / len(y))  # each micro-batch's share
            events.append(("F", m, t - t0, time.perf_counter() - t0))
        for m in range(micro):
            t = time.perf_counter()
            losses[m].backward()
            events.append(("B", m, t - t0, time.perf_counter() - t0))
            dist.send(acts[m].grad, dst=0)
    ref = full[:2] if rank == 0 else full[2:]
    diff = max((p.grad - q.grad).abs().max().item() for p, q in zip(stage.parameters(), ref.parameters()))
    torch.set_default_dtype(torch.float32)
    return {"grad_diff": gather_lines(diff), "events": gather_lines(events)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file that rank 0 writes the results to")
    ap.add_argument("--steps", type=int, default=100, help="DDP-vs-single training steps")
    ap.add_argument("--batch", type=int, default=64, help="global batch (a multiple of the world size)")
    ap.add_argument("--micro", type=int, default=4, help="pipeline micro-batches")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rank, world, _ = init_from_env("gloo")
    torch.set_num_threads(1)
    checks = sorted({1, 10, 50, args.steps} & set(range(1, args.steps + 1)))
    res = {"world_size": world, "collectives": collectives(rank, world),
           "ddp_fp64": ddp_vs_single(rank, world, torch.float64, args.steps, checks, args.batch, args.seed),
           "ddp_fp32": ddp_vs_single(rank, world, torch.float32, args.steps, checks, args.batch, args.seed),
           "zero": zero_vs_ddp(rank, world, 20, args.batch, args.seed),
           "no_sync": no_sync_demo(rank, world, 4, args.batch, args.seed),
           "tp": tensor_parallel(rank, world, args.seed),
           "pipeline": pipeline(rank, world, args.micro, args.seed)}
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(res, f)
        print(f"rank 0 wrote {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
