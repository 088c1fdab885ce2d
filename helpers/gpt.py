"""GPT-2 (chapter 02), built from ``helpers.layers``: the model (pre-norm blocks, GELU-tanh MLP, learned positions,
tied embeddings), a key/value cache, weight mapping to and from ``transformers.GPT2LMHeadModel``, generation
(greedy, beam search, temperature / top-k / top-p sampling), perplexity with a sliding window, and a character-level
tokenizer with a batch sampler. Reused by later chapters that train or fine-tune a decoder."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import LearnedPositionalEncoding, TransformerBlock, causal_mask

__all__ = ["GPTConfig", "GPT", "KVCache", "lm_loss", "hf_config", "to_hf", "from_hf", "load_hf_state_dict",
           "generate", "filter_logits", "sliding_window_nll", "CharTokenizer", "random_batches", "eval_loss"]


@dataclass
class GPTConfig:
    """The sizes of a GPT. Defaults are GPT-2 small's (124 M parameters)."""
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    eps: float = 1e-5

    def __post_init__(self):
        for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, k)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"GPTConfig.{k} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")


class KVCache:
    """Per-layer keys and values (batch, heads, seen, d_head) of the tokens seen so far."""

    def __init__(self):
        self.layers: list[tuple[Tensor, Tensor]] = []

    def __len__(self) -> int:  # number of cached positions
        return 0 if not self.layers else self.layers[0][0].shape[2]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search moves rows between beams)."""
        self.layers = [(k[index], v[index]) for k, v in self.layers]


def _block_cached(block: TransformerBlock, x: Tensor, past, mask: Tensor):
    """TransformerBlock.forward (pre-norm) with a KV cache: x + attn(ln1(x)), then x + mlp(ln2(x))."""
    h, kv = block.self_attn.forward_cached(block.res1.norm(x), past, mask)
    x = x + block.res1.drop(h)
    return block.res2(x, block.ff), kv


class GPT(nn.Module):
    """GPT-2: token + learned position embeddings, ``n_layer`` pre-norm TransformerBlocks (GELU-tanh), final
    LayerNorm, and an LM head tied to the token embedding. ``forward`` returns logits (batch, seq_len, vocab)."""

    def __init__(self, cfg: GPTConfig | None = None, **sizes):
        super().__init__()
        self.config = cfg = cfg if cfg is not None else GPTConfig(**sizes)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = LearnedPositionalEncoding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.n_embd, cfg.n_head, 4 * cfg.n_embd, cfg.dropout, norm_first=True,
                             activation="gelu_tanh", eps=cfg.eps) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: the same matrix reads tokens in and scores them out
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def _check(self, idx: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None, past: int) -> None:
        if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.is_floating_point():
            raise ValueError(f"idx must be an integer tensor (batch, seq_len), got "
                             f"{tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__}")
        if past + idx.shape[1] > self.config.block_size:
            raise ValueError(f"{past + idx.shape[1]} positions (cached {past} + new {idx.shape[1]}) exceed the context "
                             f"block_size={self.config.block_size}; crop the input to its last {self.config.block_size} tokens")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, vocab_size={self.config.vocab_size}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[0] != idx.shape[0]
                                           or attention_mask.shape[1] != past + idx.shape[1]):
            raise ValueError(f"attention_mask must be (batch, cached + new) = ({idx.shape[0]}, {past + idx.shape[1]}) "
                             f"with 1 for tokens and 0 for padding, got {tuple(attention_mask.shape)}")
        if position_ids is not None and position_ids.shape[-1] != idx.shape[1]:
            raise ValueError(f"position_ids must be (batch, seq_len={idx.shape[1]}), got {tuple(position_ids.shape)}")

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                cache: KVCache | None = None, need_weights: bool = False) -> Tensor:
        """Logits for ``idx`` (batch, T). ``attention_mask`` (batch, past + T) has 0 at padding; ``cache`` (a KVCache)
        is read and extended in place, so that only the new tokens are computed."""
        past = 0 if cache is None else len(cache)
        self._check(idx, attention_mask, position_ids, past)
        T = idx.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe.emb(position_ids))
        # mask: query t (absolute position past + t) sees keys <= it, minus padding; a token always sees itself,
        # so that rows of padding never have every key masked (that would give NaN)
        mask = torch.ones(T, past + T, dtype=torch.bool, device=idx.device).tril(past)
        if attention_mask is not None:
            eye = torch.zeros_like(mask)
            eye[:, past:] = torch.eye(T, dtype=torch.bool, device=idx.device)
            mask = (mask & attention_mask.bool()[:, None, None, :]) | eye
        if cache is None:
            if attention_mask is None:
                mask = causal_mask(T, idx.device)
            for block in self.blocks:
                x = block(x, mask=mask, need_weights=need_weights)
        else:
            new = []
            for i, block in enumerate(self.blocks):
                x, kv = _block_cached(block, x, cache.layers[i] if cache.layers else None, mask)
                new.append(kv)
            cache.layers = new
        return self.lm_head(self.ln_f(x))


def lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean next-token cross-entropy (nats) of ``model`` on a batch ``(x, y)``; the loss_fn for ``helpers.fit``."""
    device = next(model.parameters()).device
    x, y = (t.to(device) for t in batch)
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


# --------------------------------------------------------------------------- transformers <-> ours

def hf_config(cfg: GPTConfig, **extra):
    """A ``transformers.GPT2Config`` with the sizes of ``cfg`` (GELU-tanh, tied embeddings, no bos/eos by default)."""
    from transformers import GPT2Config
    kw = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None) | extra
    return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, activation_function="gelu_new", resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                      attn_pdrop=cfg.dropout, layer_norm_epsilon=cfg.eps, tie_word_embeddings=True, **kw)


def _hf_state_dict(model: GPT) -> dict[str, Tensor]:
    """Our weights under GPT-2's names. GPT-2's Conv1D stores (in, out) = our Linear weight transposed, and fuses
    q, k, v into one ``c_attn``."""
    sd: dict[str, Tensor] = {"transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": model.wpe.emb.weight,
                             "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": model.ln_f.bias,
                             "lm_head.weight": model.wte.weight}
    for i, b in enumerate(model.blocks):
        a, h = b.self_attn, f"transformer.h.{i}."
        sd |= {h + "ln_1.weight": b.res1.norm.weight, h + "ln_1.bias": b.res1.norm.bias,
               h + "attn.c_attn.weight": torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).t(),
               h + "attn.c_attn.bias": torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
               h + "attn.c_proj.weight": a.out_proj.weight.t(), h + "attn.c_proj.bias": a.out_proj.bias,
               h + "ln_2.weight": b.res2.norm.weight, h + "ln_2.bias": b.res2.norm.bias,
               h + "mlp.c_fc.weight": b.ff.fc1.weight.t(), h + "mlp.c_fc.bias": b.ff.fc1.bias,
               h + "mlp.c_proj.weight": b.ff.fc2.weight.t(), h + "mlp.c_proj.bias": b.ff.fc2.bias}
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def to_hf(model: GPT):
    """A ``transformers.GPT2LMHeadModel`` (eval mode) holding a copy of ``model``'s weights."""
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel(hf_config(model.config))
    missing, unexpected = hf.load_state_dict(_hf_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def load_hf_state_dict(model: GPT, state_dict: dict[str, Tensor]) -> GPT:
    """Copy a GPT2LMHeadModel (or GPT2Model) state dict into ``model``: split c_attn into q/k/v, transpose Conv1D."""
    sd = {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v for k, v in state_dict.items()}
    want = _hf_state_dict(model)
    missing = sorted(set(want) - set(sd) - {"lm_head.weight"})
    if missing:
        raise ValueError(f"state dict lacks {len(missing)} GPT-2 weights, e.g. {missing[:3]}; pass "
                         f"GPT2LMHeadModel(...).state_dict() with n_layer={model.config.n_layer}")
    for k, v in want.items():
        got = sd.get(k, sd["transformer.wte.weight"] if k == "lm_head.weight" else None)
        if tuple(got.shape) != tuple(v.shape):
            raise ValueError(f"{k}: checkpoint has shape {tuple(got.shape)}, our model needs {tuple(v.shape)}; "
                             f"build GPT with the checkpoint's sizes (helpers.gpt.from_hf does that)")
    D = model.config.n_embd
    with torch.no_grad():
        model.wte.weight.copy_(sd["transformer.wte.weight"])
        model.wpe.emb.weight.copy_(sd["transformer.wpe.weight"])
        model.ln_f.weight.copy_(sd["transformer.ln_f.weight"])
        model.ln_f.bias.copy_(sd["transformer.ln_f.bias"])
        for i, b in enumerate(model.blocks):
            a, h = b.self_attn, f"transformer.h.{i}."
            w, bias = sd[h + "attn.c_attn.weight"].t(), sd[h + "attn.c_attn.bias"]
            for j, proj in enumerate((a.q_proj, a.k_proj, a.v_proj)):
                proj.weight.copy_(w[j * D:(j + 1) * D])
                proj.bias.copy_(bias[j * D:(j + 1) * D])
            pairs = [(b.res1.norm.weight, "ln_1.weight"), (b.res1.norm.bias, "ln_1.bias"),
                     (b.res2.norm.weight, "ln_2.weight"), (b.res2.norm.bias, "ln_2.bias"),
                     (a.out_proj.bias, "attn.c_proj.bias"), (b.ff.fc1.bias, "mlp.c_fc.bias"),
                     (b.ff.fc2.bias, "mlp.c_proj.bias")]
            pairs += [(a.out_proj.weight, "attn.c_proj.weight"), (b.ff.fc1.weight, "mlp.c_fc.weight"),
                      (b.ff.fc2.weight, "mlp.c_proj.weight")]
            for p, name in pairs:
                src = sd[h + name]
                p.copy_(src.t() if p.dim() == 2 else src)
    return model


def from_hf(hf_model) -> GPT:
    """Our GPT (eval mode) with the sizes and weights of a ``transformers.GPT2LMHeadModel``."""
    c = hf_model.config
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh") or c.n_inner not in (None, 4 * c.n_embd):
        raise ValueError(f"only GPT-2's GELU-tanh MLP of width 4*n_embd is supported, got activation "
                         f"{c.activation_function!r}, n_inner={c.n_inner}")
    cfg = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                    n_embd=c.n_embd, dropout=0.0, eps=c.layer_norm_epsilon)
    return load_hf_state_dict(GPT(cfg), hf_model.state_dict()).eval()


# --------------------------------------------------------------------------- generation

def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Scale (batch, vocab) logits by 1/temperature, then set to -inf all but the ``top_k`` best and all outside
    the smallest set whose probability reaches ``top_p`` (nucleus)."""
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


# --------------------------------------------------------------------------- evaluation and data

@torch.no_grad()
def sliding_window_nll(model: GPT, ids: Tensor, window: int, stride: int) -> tuple[float, int]:
    """Total negative log-likelihood (nats) and number of predicted tokens of a long 1-D ``ids``, scoring each token
    once, with up to ``window`` tokens of context, moving the window by ``stride`` (stride = window: no overlap)."""
    if ids.dim() != 1:
        raise ValueError(f"ids must be one long 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    if not 1 <= stride <= window <= model.config.block_size:
        raise ValueError(f"need 1 <= stride <= window <= block_size={model.config.block_size}, "
                         f"got stride={stride}, window={window}")
    model.eval()
    nll, n, scored, start = 0.0, 0, 0, 0  # targets 1..scored are done (token 0 has no context: never a target)
    while scored < len(ids) - 1:
        end = min(start + window, len(ids) - 1)
        x, y = ids[start:end][None], ids[start + 1:end + 1]  # x[i] predicts y[i] = ids[start + 1 + i]
        first = scored - start  # skip targets an earlier window already scored
        logp = model(x)[0].float().log_softmax(-1)
        nll -= logp[first:].gather(-1, y[first:, None]).sum().item()
        n += len(y) - first
        scored, start = end, start + stride
    return nll, n


class CharTokenizer:
    """One token per character, ids in sorted character order."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> list[int]:
        bad = sorted({c for c in s if c not in self.stoi})
        if bad:
            raise ValueError(f"characters not in the vocabulary: {''.join(bad[:10])!r}; build the tokenizer on a text "
                             f"that contains them")
        return [self.stoi[c] for c in s]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in (ids.tolist() if isinstance(ids, Tensor) else ids))


def random_batches(data: Tensor, block_size: int, batch_size: int,
                   generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless (x, y) batches of random windows of a 1-D token tensor; y is x shifted by one."""
    if data.dim() != 1 or len(data) <= block_size:
        raise ValueError(f"data must be a 1-D tensor longer than block_size={block_size}, got shape {tuple(data.shape)}")
    offsets = torch.arange(block_size + 1)
    while True:
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        chunk = data[starts[:, None] + offsets]
        yield chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def eval_loss(model: GPT, data: Tensor, block_size: int, batch_size: int = 64, max_batches: int | None = None) -> float:
    """Mean next-token loss (nats) over consecutive non-overlapping windows of ``data`` (all of it by default)."""
    model.eval()
    device = next(model.parameters()).device
    n = (len(data) - 1) // block_size
    x = data[: n * block_size].view(n, block_size)
    y = data[1: n * block_size + 1].view(n, block_size)
    total, count = 0.0, 0
    for i, s in enumerate(range(0, n, batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        logits = model(x[s:s + batch_size].to(device))
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y[s:s + batch_size].to(device).reshape(-1),
                                 reduction="sum").item()
        count += y[s:s + batch_size].numel()
    return total / count
