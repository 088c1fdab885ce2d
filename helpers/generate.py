"""Text generation for the decoders of chapters 02, 05, 10 and 12: a key/value cache, greedy decoding, beam search,
and sampling with temperature / top-k / top-p. ``helpers.gpt`` re-exports every public name here."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .gpt import GPT

__all__ = ["KVCache", "generate", "filter_logits"]


class KVCache:
    """Per-layer keys and values (batch, heads, seen, d_head) of the tokens seen so far."""

    def __init__(self):
        self.layers: list[tuple[Tensor, Tensor]] = []

    def __len__(self) -> int:  # number of cached positions
        return 0 if not self.layers else self.layers[0][0].shape[2]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (a 1-D integer tensor; beam search moves rows between beams)."""
        if not isinstance(index, Tensor) or index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool:
            got = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, Tensor) else type(index).__name__
            raise ValueError(f"index must be a 1-D integer tensor of the batch rows to keep, got {got}")
        if self.layers and index.numel():
            batch = self.layers[0][0].shape[0]
            if index.min() < 0 or index.max() >= batch:
                raise ValueError(f"index values must be in [0, batch={batch}), got [{int(index.min())}, "
                                 f"{int(index.max())}]")
        self.layers = [(k[index], v[index]) for k, v in self.layers]


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Scale (batch, vocab) logits by 1/temperature, then set to -inf all but the ``top_k`` best and all outside
    the smallest set whose probability reaches ``top_p`` (nucleus)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a number > 0 (1 = the model's own distribution; for greedy decoding "
                         f"take the argmax or call generate(do_sample=False)), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1 (the number of tokens kept), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1] (e.g. 0.9 keeps the most likely tokens that make up "
                         f"90% of the probability), got {top_p!r}")
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # the mass before this token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _check_generate(model: GPT, idx, max_new_tokens, temperature, top_k, top_p, num_beams, do_sample) -> Tensor:
    if not isinstance(idx, Tensor) or idx.is_floating_point() or idx.dim() not in (1, 2) or idx.shape[-1] == 0:
        raise ValueError("idx must be a non-empty integer tensor of token ids, (seq_len,) or (batch, seq_len)")
    idx = idx if idx.dim() == 2 else idx[None]
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy, 1 = the model's own distribution), "
                         f"got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1] (e.g. 0.9 keeps the most likely tokens that make up "
                         f"90% of the probability), got {top_p!r}")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1 (1 = greedy or sampling), got {num_beams!r}")
    if num_beams > 1 and do_sample:
        raise ValueError("beam search is deterministic here: pass do_sample=False with num_beams > 1")
    if idx.shape[1] > model.config.block_size:
        raise ValueError(f"the prompt has {idx.shape[1]} tokens but the context holds block_size="
                         f"{model.config.block_size}; shorten the prompt (e.g. keep its last {model.config.block_size} tokens)")
    return idx


class _Stepper:
    """Feeds tokens to the model, with a KV cache while the sequence fits the context, else a sliding window."""

    def __init__(self, model: GPT, use_cache: bool):
        self.model, self.cache = model, KVCache() if use_cache else None

    def logits(self, seq: Tensor, n_new: int) -> Tensor:
        bs = self.model.config.block_size
        if self.cache is not None and seq.shape[1] <= bs:
            return self.model(seq[:, -n_new:] if len(self.cache) else seq, cache=self.cache)[:, -1]
        self.cache = None  # past the context: recompute over the last block_size tokens (as without a cache)
        return self.model(seq[:, -bs:])[:, -1]

    def reorder(self, index: Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)


@torch.no_grad()
def generate(model: GPT, idx: Tensor, max_new_tokens: int, *, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, num_beams: int = 1, eos_token_id: int | None = None,
             length_penalty: float = 1.0, use_cache: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Continue ``idx`` (batch, T) by ``max_new_tokens`` tokens; returns (batch, T + new).

    Greedy when ``do_sample=False`` and ``num_beams=1``; beam search when ``num_beams > 1``; otherwise sampling
    with temperature (0 = greedy), top-k and top-p. Finished rows (``eos_token_id``) are padded with eos."""
    idx = _check_generate(model, idx, max_new_tokens, temperature, top_k, top_p, num_beams, do_sample)
    was_training = model.training
    model.eval()
    try:
        if num_beams > 1:
            return _beam_search(model, idx, max_new_tokens, num_beams, eos_token_id, length_penalty, use_cache)
        step, seq = _Stepper(model, use_cache), idx
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits = step.logits(seq, 1).float()
            if do_sample and temperature > 0:
                probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            if eos_token_id is not None:
                nxt = nxt.masked_fill(done[:, None], eos_token_id)
                done |= nxt[:, 0] == eos_token_id
            seq = torch.cat([seq, nxt], dim=1)
            if done.all():
                break
        return seq
    finally:
        model.train(was_training)


def _beam_search(model: GPT, idx: Tensor, max_new: int, K: int, eos: int | None, lp: float, use_cache: bool) -> Tensor:
    """Keep the K most probable continuations (sum of log-probabilities); finished ones score sum / length**lp."""
    B, T = idx.shape
    seq = idx.repeat_interleave(K, dim=0)  # (B*K, T): row b*K + j is beam j of prompt b
    scores = torch.zeros(B, K, device=idx.device)
    scores[:, 1:] = -1e9  # at the start all beams are the same prompt: only beam 0 may expand
    step = _Stepper(model, use_cache)
    finished: list[list[tuple[float, Tensor]]] = [[] for _ in range(B)]
    n_new = T
    for _ in range(max_new):
        logp = step.logits(seq, n_new).float().log_softmax(-1)
        V = logp.shape[-1]
        cand = (scores[..., None] + logp.view(B, K, V)).view(B, K * V)
        top, flat = cand.topk(min(2 * K, K * V), dim=-1)  # 2K: room to replace beams that end in eos
        beam, tok = flat // V, flat % V
        keep = torch.zeros(B, K, dtype=torch.long, device=idx.device)
        new_tok, new_scores = torch.zeros_like(keep), torch.zeros(B, K, device=idx.device)
        for b in range(B):
            j = 0
            for r in range(top.shape[1]):
                row = b * K + beam[b, r]
                if eos is not None and tok[b, r] == eos:
                    if r < K:
                        hyp = torch.cat([seq[row], tok[b, r:r + 1]])
                        finished[b].append((top[b, r].item() / (hyp.shape[0] - T) ** lp, hyp))
                    continue
                keep[b, j], new_tok[b, j], new_scores[b, j] = row, tok[b, r], top[b, r]
                j += 1
                if j == K:
                    break
        seq = torch.cat([seq[keep.view(-1)], new_tok.view(-1, 1)], dim=1)
        step.reorder(keep.view(-1))
        scores, n_new = new_scores, 1
    out = []
    for b in range(B):
        hyps = finished[b] + [(scores[b, j].item() / (seq.shape[1] - T) ** lp if seq.shape[1] > T else scores[b, j].item(),
                               seq[b * K + j]) for j in range(K)]
        best = max(hyps, key=lambda h: h[0])[1]
        out.append(best)
    width = max(h.shape[0] for h in out)
    pad = eos if eos is not None else 0
    return torch.stack([F.pad(h, (0, width - h.shape[0]), value=pad) for h in out])
