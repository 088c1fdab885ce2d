"""GPT-2 (chapter 02), built from ``helpers.layers``: the model (pre-norm blocks, GELU-tanh MLP, learned positions,
tied embeddings), weight mapping to and from ``transformers.GPT2LMHeadModel``, perplexity with a sliding window, and
a character-level tokenizer with a batch sampler. Generation (greedy, beam search, sampling) and the key/value cache
live in ``helpers.generate`` and are re-exported here. Reused by later chapters that train or fine-tune a decoder."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .generate import KVCache, filter_logits, generate
from .layers import LearnedPositionalEncoding, TransformerBlock, causal_mask, layer_head_masks

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


class GPT(nn.Module):
    """GPT-2: token + learned position embeddings, ``n_layer`` pre-norm TransformerBlocks (GELU-tanh), final
    LayerNorm, and an LM head tied to the token embedding. ``forward`` returns logits (batch, seq_len, vocab)."""

    def __init__(self, cfg: GPTConfig | None = None, **sizes):
        super().__init__()
        if cfg is not None and sizes:
            raise ValueError(f"pass either a GPTConfig or sizes as keywords, not both (got {sorted(sizes)})")
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

    def _check(self, idx: Tensor | None, inputs_embeds: Tensor | None, attention_mask: Tensor | None,
               position_ids: Tensor | None, past: int) -> tuple[int, int]:
        """Validate the inputs; return (batch, seq_len)."""
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of idx (token ids, batch x seq_len) and inputs_embeds "
                             "(batch, seq_len, n_embd), e.g. model.wte(idx) with soft-prompt vectors in front")
        if idx is not None:
            if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.is_floating_point():
                raise ValueError(f"idx must be an integer tensor (batch, seq_len), got "
                                 f"{tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__}")
            B, T = idx.shape
        else:
            if (not isinstance(inputs_embeds, Tensor) or inputs_embeds.dim() != 3
                    or inputs_embeds.shape[-1] != self.config.n_embd or not inputs_embeds.is_floating_point()):
                got = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, Tensor) else type(inputs_embeds).__name__
                raise ValueError(f"inputs_embeds must be a float tensor (batch, seq_len, n_embd={self.config.n_embd}), "
                                 f"e.g. model.wte(idx); got {got}")
            B, T = inputs_embeds.shape[:2]
        if past + T > self.config.block_size:
            raise ValueError(f"{past + T} positions (cached {past} + new {T}) exceed the context "
                             f"block_size={self.config.block_size}; crop the input to its last {self.config.block_size} tokens")
        if idx is not None and idx.numel() and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, vocab_size={self.config.vocab_size}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[0] != B
                                           or attention_mask.shape[1] != past + T):
            raise ValueError(f"attention_mask must be (batch, cached + new) = ({B}, {past + T}) "
                             f"with 1 for tokens and 0 for padding, got {tuple(attention_mask.shape)}")
        if position_ids is not None:
            if position_ids.shape[-1] != T or position_ids.is_floating_point():
                raise ValueError(f"position_ids must be integers (batch, seq_len={T}), got "
                                 f"{position_ids.dtype} {tuple(position_ids.shape)}")
            if position_ids.numel() and (position_ids.min() < 0 or position_ids.max() >= self.config.block_size):
                raise ValueError(f"position_ids must be in [0, block_size={self.config.block_size}), got "
                                 f"[{int(position_ids.min())}, {int(position_ids.max())}]")
        return B, T

    def forward(self, idx: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, cache: KVCache | None = None, need_weights: bool = False, *,
                inputs_embeds: Tensor | None = None, head_mask: Tensor | list | None = None,
                output_hidden_states: bool = False) -> Tensor | tuple[Tensor, tuple[Tensor, ...]]:
        """Logits (batch, T, vocab) of token ids ``idx`` (batch, T), or of ``inputs_embeds`` (batch, T, n_embd) used in
        place of ``wte(idx)`` (position embeddings are still added).

        ``attention_mask`` (batch, past + T) has 0 at padding; ``cache`` (a KVCache) is read and extended in place,
        so that only the new tokens are computed. ``head_mask``: (n_head,), (n_layer, n_head) or a list with one mask
        per layer; 0 removes a head. ``output_hidden_states=True`` returns (logits, hidden_states): the n_layer + 1
        states of GPT2Model (the embeddings, then each block's output; the last one after ``ln_f``)."""
        past = 0 if cache is None else len(cache)
        B, T = self._check(idx, inputs_embeds, attention_mask, position_ids, past)
        device = (idx if idx is not None else inputs_embeds).device
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=device)
        x = self.drop((self.wte(idx) if idx is not None else inputs_embeds) + self.wpe.emb(position_ids))
        # mask: query t (absolute position past + t) sees keys <= it, minus padding; a token always sees itself,
        # so that rows of padding never have every key masked (that would give NaN)
        mask = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(past)
        if attention_mask is not None:
            eye = torch.zeros_like(mask)
            eye[:, past:] = torch.eye(T, dtype=torch.bool, device=device)
            mask = (mask & attention_mask.bool()[:, None, None, :]) | eye
        elif cache is None:
            mask = causal_mask(T, device)
        head_masks = layer_head_masks(head_mask, len(self.blocks))
        hidden, new = [x], []
        for i, block in enumerate(self.blocks):
            if cache is None:
                x = block(x, mask=mask, need_weights=need_weights, head_mask=head_masks[i])
            else:
                past_kv = cache.layers[i] if cache.layers else None
                x, kv = block.forward_cached(x, past_kv, mask, head_mask=head_masks[i])
                new.append(kv)
            hidden.append(x)
        if cache is not None:
            cache.layers = new
        x = self.ln_f(x)
        logits = self.lm_head(x)
        return (logits, (*hidden[:-1], x)) if output_hidden_states else logits


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


# --------------------------------------------------------------------------- evaluation and data

@torch.no_grad()
def sliding_window_nll(model: GPT, ids: Tensor, window: int, stride: int) -> tuple[float, int]:
    """Total negative log-likelihood (nats) and number of predicted tokens of a long 1-D ``ids``, scoring each token
    once, with up to ``window`` tokens of context, moving the window by ``stride`` (stride = window: no overlap)."""
    if ids.dim() != 1:
        raise ValueError(f"ids must be one long 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    if len(ids) < 2:
        raise ValueError(f"ids must hold at least 2 tokens (the first one is never predicted), got {len(ids)}")
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
        if not isinstance(text, str) or not text:
            raise ValueError(f"CharTokenizer needs a non-empty str to build its vocabulary from, got {text!r:.40}")
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
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < len(self.chars))]
        if bad:
            raise ValueError(f"ids must be ints in [0, vocab_size={len(self.chars)}), got {bad[:5]}; were they made "
                             f"by another tokenizer?")
        return "".join(self.chars[i] for i in ids)


def random_batches(data: Tensor, block_size: int, batch_size: int,
                   generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless (x, y) batches of random windows of a 1-D token tensor; y is x shifted by one."""
    for name, v in (("block_size", block_size), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if data.dim() != 1 or len(data) <= block_size:
        raise ValueError(f"data must be a 1-D tensor longer than block_size={block_size}, got shape {tuple(data.shape)}")
    return _random_batches(data, block_size, batch_size, generator)


def _random_batches(data: Tensor, block_size: int, batch_size: int,
                    generator: torch.Generator | None) -> Iterator[tuple[Tensor, Tensor]]:
    offsets = torch.arange(block_size + 1)
    while True:
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        chunk = data[starts[:, None] + offsets]
        yield chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def eval_loss(model: GPT, data: Tensor, block_size: int, batch_size: int = 64, max_batches: int | None = None) -> float:
    """Mean next-token loss (nats) over consecutive non-overlapping windows of ``data`` (all of it by default)."""
    if not isinstance(data, Tensor) or data.dim() != 1 or len(data) <= block_size:
        got = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"data must be a 1-D tensor of token ids longer than block_size={block_size} (one window "
                         f"plus its shifted target), got {got}")
    for name, v in (("block_size", block_size), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
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
