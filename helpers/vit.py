"""The Vision Transformer (chapter 04): patch embedding, a ViT built from ``helpers.layers``, weight export to
``transformers.ViTForImageClassification``, and the attention measures of the ViT paper (rollout, mean attention
distance, entropy)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import LearnedPositionalEncoding, TransformerBlock

__all__ = ["check_images", "patchify", "PatchEmbedding", "ViT", "vit_config", "to_hf", "attention_maps",
           "attention_rollout", "mean_attention_distance", "attention_entropy"]


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    h, w = (v, v) if isinstance(v, int) else tuple(v)
    if not all(isinstance(s, int) and s > 0 for s in (h, w)):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of them, got {v!r}")
    return h, w


def check_images(images: Tensor, image_size: int | tuple[int, int], patch_size: int, in_channels: int) -> None:
    """Raise a clear ValueError unless ``images`` is (batch, in_channels, *image_size) and patches tile it."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor (batch, channels, height, width), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be 4-D (batch, channels, height, width), got shape {tuple(images.shape)}; "
                         f"add a batch dim with images[None] or a channel dim with images[:, None]")
    if images.shape[1] != in_channels:
        raise ValueError(f"images have {images.shape[1]} channels but the model expects in_channels={in_channels}; "
                         f"convert the images (e.g. grayscale ↔ RGB) or build the model with in_channels={images.shape[1]}")
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}×{w} is not divisible by patch_size={patch_size}; resize, crop or pad "
                         f"to a multiple of {patch_size}, or pick a patch size that divides both")
    if (h, w) != _pair(image_size, "image_size"):
        raise ValueError(f"images are {h}×{w} but the model was built for image_size={image_size}")


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) → (B, N, C·p·p): non-overlapping p×p patches, row by row, each flattened channel-first."""
    if not isinstance(patch_size, int) or patch_size <= 0:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    check_images(images, tuple(images.shape[-2:]), patch_size, images.shape[1] if images.dim() == 4 else -1)
    return F.unfold(images, kernel_size=patch_size, stride=patch_size).transpose(1, 2)


class PatchEmbedding(nn.Module):
    """Cut an image into p×p patches and project each to ``d_model``: a Conv2d with kernel = stride = p."""

    def __init__(self, image_size: int | tuple[int, int] = 28, patch_size: int = 7, in_channels: int = 1,
                 d_model: int = 64):
        super().__init__()
        h, w = _pair(image_size, "image_size")
        if not isinstance(patch_size, int) or patch_size <= 0:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if h % patch_size or w % patch_size:
            raise ValueError(f"image size {h}×{w} is not divisible by patch_size={patch_size}; "
                             f"choose a patch size that divides both (for 28×28: 1, 2, 4, 7, 14, 28)")
        if not isinstance(in_channels, int) or in_channels <= 0:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        self.image_size, self.patch_size, self.in_channels = (h, w), patch_size, in_channels
        self.grid = (h // patch_size, w // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.proj = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) -> (B, N, D)
        check_images(images, self.image_size, self.patch_size, self.in_channels)
        return self.proj(images).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """ViT: patch embedding, [CLS] token, learned position embeddings, pre-norm encoder, final LayerNorm, head.

    The head reads the [CLS] token: one Linear (as in ViT fine-tuning and ``ViTForImageClassification``), or with
    ``head_hidden`` an MLP Linear→tanh→Linear (the paper's pre-training head). ``pos_embedding=False`` drops the
    position embeddings (the ablation of chapter 04). Defaults match HF ViT: GELU, LayerNorm eps 1e-12.
    """

    def __init__(self, image_size: int | tuple[int, int] = 28, patch_size: int = 7, in_channels: int = 1,
                 num_classes: int = 10, d_model: int = 64, depth: int = 4, n_heads: int = 4, d_ff: int | None = None,
                 dropout: float = 0.0, pos_embedding: bool = True, head_hidden: int | None = None, eps: float = 1e-12):
        super().__init__()
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        self.patch_embed = PatchEmbedding(image_size, patch_size, in_channels, d_model)
        self.d_model, self.n_heads, self.d_ff = d_model, n_heads, 4 * d_model if d_ff is None else d_ff
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        n_tokens = self.patch_embed.num_patches + 1
        self.pos = LearnedPositionalEncoding(n_tokens, d_model) if pos_embedding else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, self.d_ff, dropout, norm_first=True,
                                                     activation="gelu", eps=eps) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.pre_head = (nn.Sequential(nn.Linear(d_model, head_hidden), nn.Tanh()) if head_hidden else nn.Identity())
        self.head = nn.Linear(head_hidden or d_model, num_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:  # the usual ViT init: truncated normal (std 0.02) for weights, zero biases
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)

    def embed(self, images: Tensor) -> Tensor:
        """Images → (B, 1 + N, D) tokens: [CLS] then patches, with position embeddings added."""
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.drop(self.pos(x))

    def features(self, images: Tensor, need_weights: bool = False) -> Tensor:
        """Final-LayerNorm token states (B, 1 + N, D); ``need_weights`` keeps each block's attention weights."""
        x = self.embed(images)
        for block in self.blocks:
            x = block(x, need_weights=need_weights)
        return self.norm(x)

    def forward(self, images: Tensor, need_weights: bool = False) -> Tensor:
        return self.head(self.pre_head(self.features(images, need_weights)[:, 0]))


def vit_config(model: ViT):
    """A ``transformers.ViTConfig`` with the same shape as ``model`` (no download)."""
    from transformers import ViTConfig
    if not isinstance(model, ViT):
        raise TypeError(f"vit_config needs a helpers.vit.ViT, got {type(model).__name__}")
    pe = model.patch_embed
    if pe.image_size[0] != pe.image_size[1]:
        raise ValueError(f"HF ViTConfig wants a square image_size, got {pe.image_size}")
    return ViTConfig(hidden_size=model.d_model, num_hidden_layers=len(model.blocks), num_attention_heads=model.n_heads,
                     intermediate_size=model.d_ff, hidden_act="gelu", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, layer_norm_eps=model.norm.eps, image_size=pe.image_size[0],
                     patch_size=pe.patch_size, num_channels=pe.in_channels, num_labels=model.head.out_features,
                     qkv_bias=True, pooler_output_size=getattr(model.pre_head[0], "out_features", None)
                     if isinstance(model.pre_head, nn.Sequential) else None)


def to_hf(model: ViT):
    """Copy our weights into a new ``ViTForImageClassification`` (linear head) or, with an MLP head, a ``ViTModel``
    whose tanh pooler is our head's first layer (apply ``model.head`` to its ``pooler_output``)."""
    from transformers import ViTForImageClassification, ViTModel
    if not isinstance(model.pos, LearnedPositionalEncoding):
        raise ValueError("HF ViT always adds position embeddings: export a model built with pos_embedding=True")
    mlp = isinstance(model.pre_head, nn.Sequential)
    cfg = vit_config(model)
    hf = (ViTModel(cfg, add_pooling_layer=True) if mlp else ViTForImageClassification(cfg)).eval()
    p = "" if mlp else "vit."
    sd = {f"{p}embeddings.cls_token": model.cls_token,
          f"{p}embeddings.position_embeddings": model.pos.emb.weight[None],
          f"{p}embeddings.patch_embeddings.projection.weight": model.patch_embed.proj.weight,
          f"{p}embeddings.patch_embeddings.projection.bias": model.patch_embed.proj.bias,
          f"{p}layernorm.weight": model.norm.weight, f"{p}layernorm.bias": model.norm.bias}
    names = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "out_proj": "o_proj"}
    for i, b in enumerate(model.blocks):
        q = f"{p}layers.{i}."
        for ours, theirs in names.items():
            for t in ("weight", "bias"):
                sd[f"{q}attention.{theirs}.{t}"] = getattr(getattr(b.self_attn, ours), t)
        for t in ("weight", "bias"):
            sd[f"{q}layernorm_before.{t}"] = getattr(b.res1.norm, t)
            sd[f"{q}layernorm_after.{t}"] = getattr(b.res2.norm, t)
            sd[f"{q}mlp.fc1.{t}"] = getattr(b.ff.fc1, t)
            sd[f"{q}mlp.fc2.{t}"] = getattr(b.ff.fc2, t)
    for t in ("weight", "bias"):
        if mlp:
            sd[f"pooler.dense.{t}"] = getattr(model.pre_head[0], t)
        else:
            sd[f"classifier.{t}"] = getattr(model.head, t)
    target = hf.state_dict()
    if set(sd) != set(target):
        raise RuntimeError(f"weight mapping out of date with transformers: missing {sorted(set(target) - set(sd))}, "
                           f"unexpected {sorted(set(sd) - set(target))}")
    hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()})
    return hf


# --------------------------------------------------------------------------- attention analysis

@torch.no_grad()
def attention_maps(model: ViT, images: Tensor) -> Tensor:
    """Attention weights of every layer and head: (layers, batch, heads, 1 + N, 1 + N), token 0 = [CLS]."""
    was = model.training
    model.eval()
    model(images, need_weights=True)
    model.train(was)
    return torch.stack([b.self_attn.attn_weights for b in model.blocks])


def _check_attn(attn: Tensor) -> None:
    if not isinstance(attn, Tensor) or attn.dim() != 5 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError("attention must be (layers, batch, heads, tokens, tokens) as returned by attention_maps, "
                         f"got {tuple(attn.shape) if isinstance(attn, Tensor) else type(attn).__name__}")


def attention_rollout(attn: Tensor, residual: float = 0.5) -> Tensor:
    """Abnar & Zuidema (2020): average heads, mix in the residual (``residual``·I), renormalise rows, and multiply
    the layers: (batch, T, T) = how much each output token draws on each input token. Row 0 is the [CLS] map."""
    _check_attn(attn)
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    eye = torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
    rollout = eye.expand(attn.shape[1], -1, -1)
    for layer in attn:  # (B, H, T, T)
        a = residual * eye + (1 - residual) * layer.mean(1)
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    return rollout


def mean_attention_distance(attn: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """Mean attention distance of the ViT paper (fig. 7), in pixels, per (layer, head): for patch queries, the
    distance to each patch key (between patch centres) weighted by attention renormalised over the patches,
    averaged over queries and images. [CLS] is left out as query and key."""
    _check_attn(attn)
    gh, gw = grid
    if attn.shape[-1] != gh * gw + 1:
        raise ValueError(f"attention has {attn.shape[-1]} tokens but grid {grid} gives {gh * gw} patches + [CLS]")
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], 1).to(attn) * patch_size
    dist = torch.cdist(centres, centres)  # (N, N) in pixels
    w = attn[..., 1:, 1:]
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    return (w * dist).sum(-1).mean(dim=(1, 3))  # (layers, heads)


def attention_entropy(attn: Tensor, queries: str = "all") -> Tensor:
    """Entropy in nats of each attention row, averaged over images and queries: (layers, heads). The maximum is
    log(T) (uniform attention); ``queries`` = "all" or "cls" (only the [CLS] row)."""
    _check_attn(attn)
    if queries not in ("all", "cls"):
        raise ValueError(f"queries must be 'all' or 'cls', got {queries!r}")
    a = attn[..., :1, :] if queries == "cls" else attn
    h = -(a * a.clamp_min(1e-12).log()).sum(-1)
    return h.mean(dim=(1, 3))

