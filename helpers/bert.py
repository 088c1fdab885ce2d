"""BERT (chapter 03), built from ``helpers.layers``: embeddings, a post-norm encoder, the pooler, MLM and
classification heads, weight loading from a ``transformers`` BertModel checkpoint (e.g. all-MiniLM-L6-v2), export
back to ``transformers.BertModel``, and the MLM 15 % / 80-10-10 masking rule. Reused by chapters 05, 10 and 12."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import TransformerBlock, layer_head_masks, padding_mask

__all__ = ["BertConfig", "BertEmbeddings", "Bert", "MLMHead", "BertForMLM", "BertClassifier", "mean_pool",
           "mask_tokens", "load_hf_state_dict", "from_pretrained", "read_config", "hf_config", "to_hf"]


@dataclass
class BertConfig:
    """The sizes of a BERT. Defaults are all-MiniLM-L6-v2's (6 layers, hidden 384, 12 heads)."""
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self):
        for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions",
                  "type_vocab_size"):
            v = getattr(self, k)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"BertConfig.{k} must be a positive int, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BertConfig.dropout must be in [0, 1), got {self.dropout}")


def read_config(folder: str | Path) -> BertConfig:
    """A BertConfig from a Hugging Face ``config.json`` (in ``folder``, or the file itself)."""
    path = Path(folder)
    path = path / "config.json" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no config.json at {path}; pass the folder of a BERT checkpoint (e.g. helpers.data.minilm_path())")
    c = json.loads(path.read_text(encoding="utf-8"))
    if c.get("hidden_act", "gelu") != "gelu" or c.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: only hidden_act='gelu' with absolute positions is supported, got "
                         f"{c.get('hidden_act')!r} / {c.get('position_embedding_type')!r}")
    return BertConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
                      num_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
                      max_positions=c["max_position_embeddings"], type_vocab_size=c.get("type_vocab_size", 2),
                      dropout=c.get("hidden_dropout_prob", 0.1), eps=c.get("layer_norm_eps", 1e-12),
                      pad_token_id=c.get("pad_token_id", 0) or 0)


class BertEmbeddings(nn.Module):
    """Token + position + segment embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.segment = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor | None = None, token_type_ids: Tensor | None = None,
                inputs_embeds: Tensor | None = None) -> Tensor:
        """(batch, seq_len, hidden). ``inputs_embeds`` (batch, seq_len, hidden) replaces ``word(input_ids)``;
        positions and segments are still added, then LayerNorm and dropout."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        words = self.word(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = words.shape[:2]
        if T > self.position.num_embeddings:
            raise ValueError(f"{'input_ids' if inputs_embeds is None else 'inputs_embeds'} has {T} tokens but the "
                             f"model has only max_positions={self.position.num_embeddings} position embeddings; "
                             f"truncate (tokenizer(..., truncation=True, max_length={self.position.num_embeddings})) "
                             f"or split the text")
        if token_type_ids is None:
            token_type_ids = torch.zeros(B, T, dtype=torch.long, device=words.device)
        pos = torch.arange(T, device=words.device)
        return self.drop(self.norm(words + self.position(pos) + self.segment(token_type_ids)))


def _check_inputs(input_ids: Tensor | None, attention_mask: Tensor | None, token_type_ids: Tensor | None,
                  cfg: BertConfig, inputs_embeds: Tensor | None = None) -> None:
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids (batch, seq_len) and inputs_embeds (batch, seq_len, "
                         "hidden_size), e.g. bert.embeddings.word(input_ids) with soft-prompt vectors in front")
    if inputs_embeds is not None:
        if (not isinstance(inputs_embeds, Tensor) or inputs_embeds.dim() != 3 or not inputs_embeds.is_floating_point()
                or inputs_embeds.shape[-1] != cfg.hidden_size):
            got = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, Tensor) else type(inputs_embeds).__name__
            raise ValueError(f"inputs_embeds must be a float tensor (batch, seq_len, hidden_size={cfg.hidden_size}), "
                             f"got {got}")
        shape, what = tuple(inputs_embeds.shape[:2]), "inputs_embeds has (batch, seq_len)"
    else:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ValueError(f"input_ids must be an integer tensor (batch, seq_len), got "
                             f"{tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__}")
        shape, what = tuple(input_ids.shape), "input_ids has shape"
    for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {what} {shape}; they must match (batch, "
                             f"seq_len) — pass the tokenizer's {name} for the same batch (longer by the prompt "
                             f"length with soft prompts)")
    if input_ids is not None and input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size):
        raise ValueError(f"input_ids must be in [0, vocab_size={cfg.vocab_size}), got values in "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]; was the text encoded with another tokenizer?")


class Bert(nn.Module):
    """The BERT encoder: embeddings, ``num_layers`` post-norm TransformerBlocks (GELU), and the tanh pooler.

    ``forward`` returns the last hidden states (batch, seq_len, hidden); ``pool(hidden)`` gives the pooled [CLS].
    """

    def __init__(self, cfg: BertConfig | None = None, **sizes):
        super().__init__()
        if cfg is not None and sizes:
            raise ValueError(f"pass either a BertConfig or sizes as keywords, not both (got {sorted(sizes)})")
        self.config = cfg = cfg if cfg is not None else BertConfig(**sizes)
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size ({cfg.hidden_size}) must be divisible by num_heads ({cfg.num_heads})")
        self.embeddings = BertEmbeddings(cfg)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.dropout, norm_first=False,
                             activation="gelu", eps=cfg.eps) for _ in range(cfg.num_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:  # BERT's init: normal(0, 0.02) weights, zero biases, LayerNorm = identity
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                m.weight.data[m.padding_idx].zero_()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, need_weights: bool = False, *,
                inputs_embeds: Tensor | None = None, head_mask: Tensor | list | None = None,
                output_hidden_states: bool = False) -> Tensor | tuple[Tensor, tuple[Tensor, ...]]:
        """Last hidden states (batch, T, hidden) of ``input_ids`` (batch, T), or of ``inputs_embeds`` (batch, T, hidden)
        used in place of the word embeddings (positions, segments and LayerNorm still apply).

        ``attention_mask`` (batch, T) has 0 at padding. ``head_mask``: (num_heads,), (num_layers, num_heads) or a list
        with one mask per layer; 0 removes a head. ``output_hidden_states=True`` returns (last, hidden_states): the
        num_layers + 1 states of BertModel (the embeddings, then each layer's output)."""
        _check_inputs(input_ids, attention_mask, token_type_ids, self.config, inputs_embeds)
        x = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        mask = None if attention_mask is None else padding_mask(attention_mask)
        hidden = [x]
        for block, hm in zip(self.blocks, layer_head_masks(head_mask, len(self.blocks))):
            x = block(x, mask=mask, need_weights=need_weights, head_mask=hm)
            hidden.append(x)
        return (x, tuple(hidden)) if output_hidden_states else x

    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Remove attention heads for good, ``{layer: [head, ...]}`` (indices of the current heads; the
        transformers 4 convention). Build the optimizer afterwards: the pruned projections are new parameters."""
        if not isinstance(heads_to_prune, dict):
            raise TypeError(f"heads_to_prune must be a dict {{layer: [heads]}}, got {type(heads_to_prune).__name__}")
        bad = [k for k in heads_to_prune if not isinstance(k, int) or not 0 <= k < len(self.blocks)]
        if bad:
            raise ValueError(f"layer indices {bad} are out of range: the model has num_layers={len(self.blocks)}")
        for layer, heads in heads_to_prune.items():
            self.blocks[layer].self_attn.prune_heads(heads)

    def pool(self, hidden: Tensor) -> Tensor:
        """BERT's pooler: tanh(W h_[CLS] + b)."""
        return torch.tanh(self.pooler(hidden[:, 0]))


def mean_pool(hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Average of the token vectors, padding left out (sentence-transformers' pooling)."""
    if attention_mask is None:
        return hidden.mean(1)
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but hidden is (batch, seq_len, "
                         f"hidden) = {tuple(hidden.shape)}; pass the (batch, seq_len) mask of the same batch")
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense → GELU → LayerNorm → decoder tied to the word embeddings (+ bias).

    ``forward(hidden, positions)`` projects only the selected positions (a bool mask (batch, seq_len)) to the
    vocabulary: (n_selected, vocab). With ``positions=None`` it projects every position: (batch, seq_len, vocab).
    """

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps)
        self.word = word_embeddings  # tied: the decoder weight *is* the embedding matrix
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: Tensor, positions: Tensor | None = None) -> Tensor:
        if positions is not None:
            if positions.shape != hidden.shape[:2] or positions.dtype != torch.bool:
                raise ValueError(f"positions must be a bool mask of shape {tuple(hidden.shape[:2])}, "
                                 f"got {positions.dtype} {tuple(positions.shape)}")
            hidden = hidden[positions]
        h = self.norm(F.gelu(self.dense(hidden)))
        return h @ self.word.weight.T + self.bias


class BertForMLM(nn.Module):
    """A Bert plus its MLM head. ``forward`` returns logits for the masked positions only when ``labels`` are given."""

    def __init__(self, cfg: BertConfig | None = None, **sizes):
        super().__init__()
        self.bert = Bert(cfg, **sizes)
        self.head = MLMHead(self.bert.config, self.bert.embeddings.word)
        nn.init.normal_(self.head.dense.weight, std=0.02)
        nn.init.zeros_(self.head.dense.bias)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, full: bool = False, *,
                inputs_embeds: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Return (logits, loss). ``labels`` uses -100 for unmasked tokens; ``full=True`` projects every position;
        ``inputs_embeds`` replaces the word embeddings as in ``Bert.forward``."""
        hidden = self.bert(input_ids, attention_mask, inputs_embeds=inputs_embeds)
        if labels is None:
            return self.head(hidden), None
        if labels.shape != hidden.shape[:2]:
            raise ValueError(f"labels has shape {tuple(labels.shape)}, the inputs (batch, seq_len) = "
                             f"{tuple(hidden.shape[:2])}; they must match")
        if not (labels != -100).any():
            raise ValueError("every label is -100, so there is no token to predict and the loss would be NaN; mask "
                             "at least one token (helpers.bert.mask_tokens) or skip this batch")
        if full:
            logits = self.head(hidden)
            return logits, F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        sel = labels != -100
        logits = self.head(hidden, sel)
        return logits, F.cross_entropy(logits, labels[sel])


class BertClassifier(nn.Module):
    """Sentence classifier on a Bert: pool ("mean" over tokens or "cls" = BERT's pooler) → dropout → Linear."""

    def __init__(self, bert: Bert, num_labels: int = 2, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an int ≥ 2, got {num_labels!r}")
        self.bert, self.pooling = bert, pooling
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(bert.config.hidden_size, num_labels)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, *, inputs_embeds: Tensor | None = None) -> Tensor:
        h = self.bert(input_ids, attention_mask, token_type_ids, inputs_embeds=inputs_embeds)
        z = mean_pool(h, attention_mask) if self.pooling == "mean" else self.bert.pool(h)
        return self.head(self.drop(z))


# --------------------------------------------------------------------------- weights: transformers <-> ours

def _key_map(cfg: BertConfig) -> dict[str, str]:
    """transformers BertModel key → our key."""
    m = {"embeddings.word_embeddings.weight": "embeddings.word.weight",
         "embeddings.position_embeddings.weight": "embeddings.position.weight",
         "embeddings.token_type_embeddings.weight": "embeddings.segment.weight",
         "embeddings.LayerNorm.weight": "embeddings.norm.weight", "embeddings.LayerNorm.bias": "embeddings.norm.bias",
         "pooler.dense.weight": "pooler.weight", "pooler.dense.bias": "pooler.bias"}
    parts = {"attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
             "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
             "attention.output.LayerNorm": "res1.norm", "intermediate.dense": "ff.fc1", "output.dense": "ff.fc2",
             "output.LayerNorm": "res2.norm"}
    for i in range(cfg.num_layers):
        for theirs, ours in parts.items():
            for t in ("weight", "bias"):
                m[f"encoder.layer.{i}.{theirs}.{t}"] = f"blocks.{i}.{ours}.{t}"
    return m


_IGNORED = ("embeddings.position_ids",)  # a buffer some checkpoints store, not a weight


def load_hf_state_dict(model: Bert, state_dict: dict[str, Tensor]) -> Bert:
    """Copy a ``transformers`` BertModel state_dict (keys may carry a ``bert.`` prefix) into ``model``.

    Every weight must be there with the shape our config implies; otherwise a ValueError names the key and shapes.
    """
    if not isinstance(model, Bert):
        raise TypeError(f"load_hf_state_dict needs a helpers.bert.Bert, got {type(model).__name__}")
    sd = {k.removeprefix("bert."): v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if k.startswith(("embeddings.", "encoder.", "pooler.")) and k not in _IGNORED}
    kmap, ours = _key_map(model.config), model.state_dict()
    missing = [k for k in kmap if k not in sd]
    unexpected = [k for k in sd if k not in kmap]
    if unexpected:
        raise ValueError(f"checkpoint has {len(unexpected)} weights our config (num_layers={model.config.num_layers}) "
                         f"has no place for, e.g. {unexpected[0]!r}; build the model with the checkpoint's config "
                         f"(helpers.bert.read_config)")
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} weights our model needs, e.g. {missing[0]!r}; is it a BERT "
                         f"checkpoint with num_layers={model.config.num_layers}?")
    new = {}
    for theirs, mine in kmap.items():
        if tuple(sd[theirs].shape) != tuple(ours[mine].shape):
            raise ValueError(f"checkpoint weight {theirs!r} has shape {tuple(sd[theirs].shape)} but our {mine!r} is "
                             f"{tuple(ours[mine].shape)} (config: hidden_size={model.config.hidden_size}, "
                             f"intermediate_size={model.config.intermediate_size}, vocab_size={model.config.vocab_size}, "
                             f"max_positions={model.config.max_positions}); build the model with the checkpoint's config")
        new[mine] = sd[theirs]
    model.load_state_dict(new)
    return model


def from_pretrained(folder: str | Path | None = None) -> Bert:
    """Our Bert with the weights of a local BertModel folder (``config.json`` + ``model.safetensors``);
    default: all-MiniLM-L6-v2 from ``helpers.data.minilm_path()``. Nothing is downloaded."""
    from safetensors.torch import load_file
    if folder is None:
        from .data import minilm_path
        folder = minilm_path()
    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"no model.safetensors in {folder}")
    model = Bert(read_config(folder))
    return load_hf_state_dict(model, load_file(str(weights))).eval()


def hf_config(cfg: BertConfig):
    """A ``transformers.BertConfig`` with the same sizes (dropout as ours; no download)."""
    from transformers import BertConfig as HFBertConfig
    return HFBertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                        max_position_embeddings=cfg.max_positions, type_vocab_size=cfg.type_vocab_size,
                        hidden_act="gelu", hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                        layer_norm_eps=cfg.eps, pad_token_id=cfg.pad_token_id)


def to_hf(model: Bert):
    """Copy our weights into a new (randomly initialised, then overwritten) ``transformers.BertModel``, in eval mode."""
    from transformers import BertModel
    if not isinstance(model, Bert):
        raise TypeError(f"to_hf needs a helpers.bert.Bert, got {type(model).__name__}")
    hf = BertModel(hf_config(model.config), add_pooling_layer=True).eval()
    ours = model.state_dict()
    sd = {theirs: ours[mine].detach().clone() for theirs, mine in _key_map(model.config).items()}
    target = {k for k in hf.state_dict() if k not in _IGNORED}
    if set(sd) != target:
        raise RuntimeError(f"weight mapping out of date with transformers: missing {sorted(target - set(sd))[:3]}, "
                           f"unexpected {sorted(set(sd) - target)[:3]}")
    hf.load_state_dict(sd, strict=False)
    return hf


# --------------------------------------------------------------------------- MLM masking

def mask_tokens(input_ids: Tensor, mask_token_id: int, vocab_size: int, special_ids: list[int] | tuple[int, ...] = (),
                prob: float = 0.15, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT's MLM corruption. Select ``prob`` of the non-special tokens; of those, 80 % → [MASK], 10 % → a random
    token, 10 % unchanged. Returns (corrupted inputs, labels) with labels = -100 where nothing is predicted."""
    if not isinstance(input_ids, Tensor) or input_ids.is_floating_point():
        raise TypeError("input_ids must be an integer torch.Tensor")
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary [0, {vocab_size})")
    g = dict(generator=generator, device=input_ids.device)
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype, device=input_ids.device))
    selected = (torch.rand(input_ids.shape, **g) < prob) & ~special
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, **g)
    inputs = input_ids.clone()
    inputs[selected & (roll < 0.8)] = mask_token_id
    rand = selected & (roll >= 0.8) & (roll < 0.9)
    inputs[rand] = torch.randint(vocab_size, input_ids.shape, dtype=input_ids.dtype, **g)[rand]
    return inputs, labels
