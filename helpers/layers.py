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
    "layer_head_masks", "CPU_AUTOCAST_ATTENTION_FP32",
]

# Under CPU autocast (bf16/fp16 q, k, v on the CPU) the fused attention kernel runs in float32: PyTorch's
# low-precision CPU attention kernels are several times slower than its float32 one at this book's sizes, and the
# matmuls around attention stay in low precision. Set to False (chapter 07) to measure attention itself in bf16.
CPU_AUTOCAST_ATTENTION_FP32 = True

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


def _heads_of(heads, n_heads: int) -> list[int]:
    """Validate head indices ``heads`` (an int or an iterable of ints) against ``n_heads``; sorted list."""
    if isinstance(heads, Tensor):
        heads = heads.tolist()
    heads = [heads] if isinstance(heads, int) else list(heads)
    if not all(isinstance(h, int) and not isinstance(h, bool) for h in heads):
        raise TypeError(f"heads must be ints (indices of the current heads), got {heads!r}")
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise ValueError(f"head indices {bad} are out of range: this attention has n_heads={n_heads} "
                         f"(indices 0..{n_heads - 1})")
    if len(set(heads)) != len(heads):
        raise ValueError(f"duplicate head indices in {heads}; name each head once")
    return sorted(heads)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate Q, K, V projections; ``kv`` gives cross-attention.

    Each of ``n_heads`` heads has width ``d_head`` (default ``d_model // n_heads``): q, k, v project d_model →
    n_heads * d_head and ``out_proj`` maps n_heads * d_head → d_model. ``prune_heads`` removes heads for good.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True, d_head: int | None = None):
        super().__init__()
        if not (isinstance(d_model, int) and isinstance(n_heads, int)) or d_model <= 0 or n_heads <= 0:
            raise ValueError(f"d_model and n_heads must be positive ints, got d_model={d_model}, n_heads={n_heads}")
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}); try n_heads in "
                                 f"{[h for h in range(1, d_model + 1) if d_model % h == 0][:8]}, or pass d_head")
            d_head = d_model // n_heads
        if not isinstance(d_head, int) or isinstance(d_head, bool) or d_head <= 0:
            raise ValueError(f"d_head must be a positive int (the width of one head) or None, got {d_head!r}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_head
        self.dropout = dropout
        inner = n_heads * d_head
        self.q_proj = nn.Linear(d_model, inner, bias=bias)
        self.k_proj = nn.Linear(d_model, inner, bias=bias)
        self.v_proj = nn.Linear(d_model, inner, bias=bias)
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        self.attn_weights: Tensor | None = None  # last weights, kept when forward(need_weights=True)

    @property
    def inner_dim(self) -> int:
        """n_heads * d_head: the width of q, k, v (equal to d_model unless d_head was chosen or heads pruned)."""
        return self.n_heads * self.d_head

    def _split(self, x: Tensor) -> Tensor:  # (B, T, n_heads * d_head) -> (B, H, T, d_head)
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: Tensor, kv: Tensor | None = None, mask: Tensor | None = None,
                need_weights: bool = False, head_mask: Tensor | None = None) -> Tensor:
        """(batch, q_len, d_model) → (batch, q_len, d_model). ``head_mask`` (n_heads,) or (batch, n_heads) scales
        each head's output (0 removes a head); with ``need_weights`` the weights are kept in ``attn_weights``."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, seq_len, d_model={self.d_model}), got {tuple(x.shape)}")
        kv = x if kv is None else kv
        if kv.dim() != 3 or kv.shape[-1] != self.d_model or kv.shape[0] != x.shape[0]:
            raise ValueError(f"kv must be (batch={x.shape[0]}, kv_len, d_model={self.d_model}), got {tuple(kv.shape)}")
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
        _check_mask(mask, (x.shape[0], self.n_heads, x.shape[1], kv.shape[1]))
        hm = self._head_mask(head_mask, x.shape[0])
        if need_weights:
            out, w = scaled_dot_product_attention(q, k, v, mask, self.dropout, self.training)
            self.attn_weights = (w if hm is None else w * hm.to(w.dtype)).detach()
        else:
            out = self._attend(q, k, v, mask)
        return self._merge(out, hm)

    def forward_cached(self, x: Tensor, past: tuple[Tensor, Tensor] | None, mask: Tensor | None = None,
                       head_mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Self-attention of new tokens ``x`` over cached keys/values ``past`` (each (batch, heads, seen, d_head), or
        None) plus their own; ``mask`` is (…, new, seen + new). Returns (output, (keys, values)) with the new keys
        and values appended: the key/value cache of generation."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, new_len, d_model={self.d_model}), got {tuple(x.shape)}")
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        if past is not None:
            want = (x.shape[0], self.n_heads, self.d_head)
            if (len(past) != 2 or any(p.dim() != 4 or (p.shape[0], p.shape[1], p.shape[3]) != want for p in past)
                    or past[0].shape[2] != past[1].shape[2]):
                raise ValueError(f"past must be (keys, values), each (batch, n_heads, seen, d_head) = ({want[0]}, "
                                 f"{want[1]}, seen, {want[2]}); got {[tuple(p.shape) for p in past]}")
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        _check_mask(mask, (x.shape[0], self.n_heads, x.shape[1], k.shape[2]))
        return self._merge(self._attend(q, k, v, mask), self._head_mask(head_mask, x.shape[0])), (k, v)

    def _head_mask(self, head_mask: Tensor | None, batch: int) -> Tensor | None:
        """(n_heads,) or (batch, n_heads) → broadcastable to (batch, n_heads, 1, 1)."""
        if head_mask is None:
            return None
        if not isinstance(head_mask, Tensor):
            raise TypeError(f"head_mask must be a torch.Tensor of shape (n_heads,) or (batch, n_heads), "
                            f"got {type(head_mask).__name__}")
        if tuple(head_mask.shape) not in ((self.n_heads,), (batch, self.n_heads)):
            raise ValueError(f"head_mask must be (n_heads,) = ({self.n_heads},) or (batch, n_heads) = ({batch}, "
                             f"{self.n_heads}) with 1 to keep a head and 0 to remove it, got {tuple(head_mask.shape)}")
        return head_mask.reshape(-1, self.n_heads, 1, 1)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """PyTorch's fused kernel: the same maths as scaled_dot_product_attention above, faster."""
        p = self.dropout if self.training else 0.0
        if CPU_AUTOCAST_ATTENTION_FP32 and q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
            # see CPU_AUTOCAST_ATTENTION_FP32 at the top: attention in float32, the matmuls around it stay low precision
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=p)
            return out.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def _merge(self, out: Tensor, head_mask: Tensor | None = None) -> Tensor:
        """(B, H, T, d_head), times the head mask → (B, T, H * d_head), then the output projection."""
        if head_mask is not None:
            out = out * head_mask.to(out.dtype)
        return self.out_proj(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], self.inner_dim))

    @torch.no_grad()
    def prune_heads(self, heads) -> None:
        """Remove heads (indices of the current heads) for good: drop their rows of q/k/v and their columns of
        out_proj. The output equals forward(head_mask=0 at those heads)."""
        drop = _heads_of(heads, self.n_heads)
        if len(drop) == self.n_heads:
            raise ValueError(f"cannot prune all {self.n_heads} heads of an attention layer; keep at least one "
                             f"(to remove the layer, skip the block instead)")
        if not drop:
            return
        keep = torch.tensor([h for h in range(self.n_heads) if h not in drop], device=self.q_proj.weight.device)
        idx = (keep[:, None] * self.d_head + torch.arange(self.d_head, device=keep.device)).reshape(-1)
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self, name, _slice_linear(getattr(self, name), idx, dim=0))
        self.out_proj = _slice_linear(self.out_proj, idx, dim=1)
        self.n_heads = len(keep)


def _slice_linear(layer: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    """A new Linear with only rows (dim=0: outputs) or columns (dim=1: inputs) ``index`` of ``layer``."""
    w = layer.weight.index_select(dim, index).clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    new.weight.requires_grad_(layer.weight.requires_grad)
    if layer.bias is not None:
        new.bias.copy_(layer.bias if dim == 1 else layer.bias[index])
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new


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
                 norm_first: bool = True, activation: str = "gelu", eps: float = 1e-5, cross_attention: bool = False,
                 d_head: int | None = None):
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, d_head=d_head)
        self.res1 = Residual(d_model, norm_first, dropout, eps)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, d_head=d_head) if cross_attention else None
        self.res_cross = Residual(d_model, norm_first, dropout, eps) if cross_attention else None
        self.ff = FeedForward(d_model, d_ff, activation, dropout)
        self.res2 = Residual(d_model, norm_first, 0.0, eps)  # FeedForward applies its own dropout

    def forward(self, x: Tensor, mask: Tensor | None = None, memory: Tensor | None = None,
                memory_mask: Tensor | None = None, need_weights: bool = False,
                head_mask: Tensor | None = None) -> Tensor:
        """(batch, seq_len, d_model) → same shape. ``head_mask`` (n_heads,) or (batch, n_heads) scales the heads of
        the self-attention (see MultiHeadAttention)."""
        x = self.res1(x, lambda h: self.self_attn(h, mask=mask, need_weights=need_weights, head_mask=head_mask))
        return self._cross_and_ff(x, memory, memory_mask, need_weights)

    def forward_cached(self, x: Tensor, past: tuple[Tensor, Tensor] | None, mask: Tensor | None = None,
                       memory: Tensor | None = None, memory_mask: Tensor | None = None,
                       head_mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``forward`` for new tokens ``x`` whose self-attention also sees the keys/values ``past`` (each (batch,
        heads, seen, d_head), or None) of earlier tokens, or a learned prefix. ``mask`` is (…, new, seen + new);
        None lets every new token see every key. Returns (output, (keys, values)) with the new keys/values appended."""
        kv: list[tuple[Tensor, Tensor]] = []

        def attend(h: Tensor) -> Tensor:
            out, new_kv = self.self_attn.forward_cached(h, past, mask, head_mask)
            kv.append(new_kv)
            return out

        x = self.res1(x, attend)  # pre-norm: x + attend(norm(x)); post-norm: norm(x + attend(x))
        return self._cross_and_ff(x, memory, memory_mask, False), kv[0]

    def _cross_and_ff(self, x: Tensor, memory: Tensor | None, memory_mask: Tensor | None, need_weights: bool) -> Tensor:
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("this block has cross-attention: pass memory=(batch, src_len, d_model)")
            x = self.res_cross(x, lambda h: self.cross_attn(h, memory, memory_mask, need_weights))
        elif memory is not None:
            raise ValueError("memory was passed but the block was built with cross_attention=False")
        return self.res2(x, self.ff)


def layer_head_masks(head_mask, n_layers: int) -> list[Tensor | None]:
    """One head mask per layer from a model-level ``head_mask`` (the Hugging Face convention): None, (n_heads,) for
    every layer, (n_layers, n_heads), or a list of n_layers per-layer masks (None or (n_heads_i,) after pruning)."""
    if head_mask is None:
        return [None] * n_layers
    if isinstance(head_mask, Tensor):
        if head_mask.dim() == 1:
            return [head_mask] * n_layers
        if head_mask.dim() == 2 and head_mask.shape[0] == n_layers:
            return list(head_mask.unbind(0))
        raise ValueError(f"head_mask must be (n_heads,) for every layer or (n_layers={n_layers}, n_heads), "
                         f"got shape {tuple(head_mask.shape)}")
    if isinstance(head_mask, (list, tuple)) and len(head_mask) == n_layers:
        return list(head_mask)
    raise ValueError(f"head_mask must be a tensor (n_heads,) or (n_layers, n_heads), or a list of {n_layers} "
                     f"per-layer masks, got {type(head_mask).__name__}"
                     f"{f' of length {len(head_mask)}' if isinstance(head_mask, (list, tuple)) else ''}")
