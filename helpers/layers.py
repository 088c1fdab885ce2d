"""Transformer building blocks shared by chapters 01-05.

Mask convention (the same as ``torch.nn.functional.scaled_dot_product_attention``): a boolean mask is
``True`` where a query may attend to a key; a float mask is added to the scores. Masks broadcast to
``(batch, heads, query_len, key_len)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "scaled_dot_product_attention", "causal_mask", "padding_mask", "MultiHeadAttention", "FeedForward",
    "Residual", "SinusoidalPositionalEncoding", "LearnedPositionalEncoding", "TransformerBlock",
]

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
}


def _check_mask(mask: Tensor | None, shape: tuple[int, int, int, int]) -> Tensor | None:
    """Validate an attention mask against scores of ``shape`` = (B, H, Tq, Tk)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor (bool: True = may attend), got {type(mask).__name__}")
    if mask.dim() < 2 or mask.dim() > 4:
        raise ValueError(f"mask must have 2 to 4 dims, broadcastable to (batch, heads, q_len, k_len) = "
                         f"{tuple(shape)}; got shape {tuple(mask.shape)}")
    try:
        torch.broadcast_shapes(mask.shape, shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the attention scores "
                         f"(batch, heads, q_len, k_len) = {tuple(shape)}; pass e.g. (q_len, k_len) for a "
                         f"causal mask or (batch, 1, 1, k_len) for padding (see helpers.padding_mask)") from None
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask must be bool (True = may attend) or float (added to scores), got {mask.dtype}")
    return mask


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 dropout: float = 0.0, training: bool = False) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ / √d + mask) v for tensors shaped (..., T, d). Returns (output, attention weights)."""
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dim, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length, got {k.shape[-2]} and {v.shape[-2]}")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        _check_mask(mask, tuple(scores.shape) if scores.dim() == 4 else (1,) * (4 - scores.dim()) + tuple(scores.shape))
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nan_to_num(weights)  # rows with every key masked get zeros, not NaN
    if dropout > 0 and training:
        weights = F.dropout(weights, dropout)
    return weights @ v, weights


def causal_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """(size, size) bool mask, True on and below the diagonal: position t sees positions ≤ t."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()


def padding_mask(attention_mask: Tensor) -> Tensor:
    """Turn a (batch, k_len) 1/0 attention mask (1 = real token) into a (batch, 1, 1, k_len) bool mask."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, seq_len) with 1 for tokens and 0 for padding, "
                         f"got shape {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate Q, K, V projections; ``kv`` gives cross-attention."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if not (isinstance(d_model, int) and isinstance(n_heads, int)) or d_model <= 0 or n_heads <= 0:
            raise ValueError(f"d_model and n_heads must be positive ints, got d_model={d_model}, n_heads={n_heads}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}); "
                             f"try n_heads in {[h for h in range(1, d_model + 1) if d_model % h == 0][:8]}")
        self.d_model, self.n_heads, self.d_head, self.dropout = d_model, n_heads, d_model // n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.attn_weights: Tensor | None = None  # last weights, kept when forward(need_weights=True)

    def _split(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, H, T, d_head)
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: Tensor, kv: Tensor | None = None, mask: Tensor | None = None,
                need_weights: bool = False) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, seq_len, d_model={self.d_model}), got {tuple(x.shape)}")
        kv = x if kv is None else kv
        if kv.dim() != 3 or kv.shape[-1] != self.d_model or kv.shape[0] != x.shape[0]:
            raise ValueError(f"kv must be (batch={x.shape[0]}, kv_len, d_model={self.d_model}), got {tuple(kv.shape)}")
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
        _check_mask(mask, (x.shape[0], self.n_heads, x.shape[1], kv.shape[1]))
        if need_weights:
            out, w = scaled_dot_product_attention(q, k, v, mask, self.dropout, self.training)
            self.attn_weights = w.detach()
        else:
            out = self._attend(q, k, v, mask)
        return self._merge(out)

    def forward_cached(self, x: Tensor, past: tuple[Tensor, Tensor] | None,
                       mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Self-attention of new tokens ``x`` over cached keys/values ``past`` (each (batch, heads, seen, d_head), or
        None) plus their own; ``mask`` is (…, new, seen + new). Returns (output, (keys, values)) with the new keys
        and values appended: the key/value cache of generation."""
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        _check_mask(mask, (x.shape[0], self.n_heads, x.shape[1], k.shape[2]))
        return self._merge(self._attend(q, k, v, mask)), (k, v)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """PyTorch's fused kernel: the same maths as scaled_dot_product_attention above, faster."""
        p = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
            # under CPU autocast: PyTorch's low-precision CPU attention kernels are several times slower than its
            # float32 one at these sizes, so attention runs in float32 (the matmuls around it stay in bf16)
            with torch.autocast("cpu", enabled=False):
                return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def _merge(self, out: Tensor) -> Tensor:  # (B, H, T, d_head) -> (B, T, D), then the output projection
        return self.out_proj(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], self.d_model))


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(d_model→d_ff) → activation → Linear(d_ff→d_model) → dropout."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.fc1, self.act = nn.Linear(d_model, d_ff, bias=bias), ACTIVATIONS[activation]()
        self.fc2, self.drop = nn.Linear(d_ff, d_model, bias=bias), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Residual(nn.Module):
    """x + sublayer(x) with LayerNorm before (pre-norm, GPT-2/ViT) or after (post-norm, original/BERT)."""

    def __init__(self, d_model: int, norm_first: bool = True, dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.norm, self.norm_first, self.drop = nn.LayerNorm(d_model, eps=eps), norm_first, nn.Dropout(dropout)

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.norm_first:
            return x + self.drop(sublayer(self.norm(x)))
        return self.norm(x + self.drop(sublayer(x)))


class SinusoidalPositionalEncoding(nn.Module):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...), added to the input."""

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"sinusoidal encodings need an even d_model, got {d_model}")
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_len {self.pe.shape[0]}")
        return x + self.pe[: x.shape[1]]


class LearnedPositionalEncoding(nn.Module):
    """A trainable vector per position (GPT-2, BERT, ViT), added to the input."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.emb = nn.Embedding(max_len, d_model)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.emb.num_embeddings:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_len {self.emb.num_embeddings}")
        return x + self.emb(torch.arange(x.shape[1], device=x.device))


class TransformerBlock(nn.Module):
    """Self-attention (+ optional cross-attention) + feed-forward, each wrapped in a Residual."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int | None = None, dropout: float = 0.0,
                 norm_first: bool = True, activation: str = "gelu", eps: float = 1e-5, cross_attention: bool = False):
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.res1 = Residual(d_model, norm_first, dropout, eps)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout) if cross_attention else None
        self.res_cross = Residual(d_model, norm_first, dropout, eps) if cross_attention else None
        self.ff = FeedForward(d_model, d_ff, activation, dropout)
        self.res2 = Residual(d_model, norm_first, 0.0, eps)  # FeedForward applies its own dropout

    def forward(self, x: Tensor, mask: Tensor | None = None, memory: Tensor | None = None,
                memory_mask: Tensor | None = None, need_weights: bool = False) -> Tensor:
        x = self.res1(x, lambda h: self.self_attn(h, mask=mask, need_weights=need_weights))
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("this block has cross-attention: pass memory=(batch, src_len, d_model)")
            x = self.res_cross(x, lambda h: self.cross_attn(h, memory, memory_mask, need_weights))
        elif memory is not None:
            raise ValueError("memory was passed but the block was built with cross_attention=False")
        return self.res2(x, self.ff)
