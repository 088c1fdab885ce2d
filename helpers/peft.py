"""Parameter-efficient fine-tuning (chapter 05): LoRA, Houlsby adapters, soft prompts and a P-tuning prompt encoder
for ``helpers.bert`` models, saving/loading only the trained parameters, and a ``transformers`` twin of our
mean-pool classifier so that ``peft`` can be run on the same weights."""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bert import BertClassifier, hf_config, mean_pool, to_hf

__all__ = ["LoRALinear", "add_lora", "merge_lora", "Adapter", "add_adapters", "SoftPrompt", "PromptEncoder",
           "PromptClassifier", "trainable_only", "save_trainable", "load_trainable", "to_hf_classifier",
           "PEFT_NAMES"]

# our module names -> the names of the same Linear layers in transformers' BertLayer (peft's target_modules)
PEFT_NAMES = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "attention.output.dense",
              "fc1": "intermediate.dense", "fc2": "output.dense"}


def _positive(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {name}={v!r}")


# --------------------------------------------------------------------------- LoRA

class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) · B A dropout(x)``: a frozen ``nn.Linear`` plus a trainable rank-``r`` update.

    A (r, in) is random (Kaiming-uniform, as peft), B (out, r) is zero, so at initialisation the layer equals ``base``.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}; choose target modules that "
                            f"are Linear layers (e.g. q_proj, v_proj)")
        _positive("r", r)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base, self.r, self.alpha, self.scale = base, r, alpha, alpha / r
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (self.drop(x) @ self.lora_A.T @ self.lora_B.T) * self.scale

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with W + (alpha / r) · B A: the same function, no extra cost."""
        lin = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        lin = lin.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.base.weight + self.scale * self.lora_B @ self.lora_A)
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        return lin


def _replace(model: nn.Module, targets: Iterable[str], make) -> list[str]:
    """Replace every submodule whose last name is in ``targets`` by ``make(module)``; return the full names."""
    targets = list(targets)
    if not targets or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"targets must be a non-empty list of module names (e.g. ['q_proj', 'v_proj']), got {targets!r}")
    names = [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in targets]
    unknown = [t for t in targets if not any(n.rsplit(".", 1)[-1] == t for n in names)]
    if unknown:
        known = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no module named {unknown} in the model; its Linear layers are called {known}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, make(getattr(parent, child)))
    return names


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16, targets: Iterable[str] = ("q_proj", "v_proj"),
             dropout: float = 0.0) -> list[str]:
    """Wrap each Linear named in ``targets`` (last part of the module name) in a ``LoRALinear``; return their names.
    Freezes nothing else: choose what trains with ``requires_grad_`` (e.g. :func:`trainable_only`)."""
    _positive("r", r)
    return _replace(model, targets, lambda m: LoRALinear(m, r, alpha, dropout))


def merge_lora(model: nn.Module) -> int:
    """Replace every ``LoRALinear`` in ``model`` by its merged ``nn.Linear`` (in place); return how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, getattr(parent, child).merged())
    return len(names)


# --------------------------------------------------------------------------- adapters

class Adapter(nn.Module):
    """Houlsby bottleneck adapter: ``x + up(gelu(down(x)))``. ``up`` starts at zero (``init_std`` = 0), so the
    adapter starts as the identity."""

    def __init__(self, d_model: int, bottleneck: int = 64, init_std: float = 0.0):
        super().__init__()
        _positive("d_model", d_model)
        _positive("bottleneck", bottleneck)
        self.down, self.up = nn.Linear(d_model, bottleneck), nn.Linear(bottleneck, d_model)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.normal_(self.up.weight, std=init_std) if init_std > 0 else nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(F.gelu(self.down(x)))


def add_adapters(model: nn.Module, bottleneck: int = 64, targets: Iterable[str] = ("out_proj", "fc2")) -> list[str]:
    """Put an ``Adapter`` right after each Linear named in ``targets`` (``Sequential(linear, adapter)``, so the
    adapter's parameters are called ``<name>.1.down.weight`` ...); return the names."""
    _positive("bottleneck", bottleneck)

    def make(m: nn.Module) -> nn.Module:
        if not isinstance(m, nn.Linear):
            raise TypeError(f"an adapter goes after an nn.Linear, got {type(m).__name__}")
        return nn.Sequential(m, Adapter(m.out_features, bottleneck)).to(m.weight.device)
    return _replace(model, targets, make)


# --------------------------------------------------------------------------- soft prompts

class SoftPrompt(nn.Module):
    """``num_virtual_tokens`` trainable vectors. ``init``: a (n, hidden) tensor (e.g. real word embeddings) or
    None for random normal(0, 0.02) (BERT's embedding init). ``forward()`` returns them, (n, hidden)."""

    def __init__(self, num_virtual_tokens: int, hidden_size: int, init: Tensor | None = None):
        super().__init__()
        _positive("num_virtual_tokens", num_virtual_tokens)
        _positive("hidden_size", hidden_size)
        if init is not None and tuple(init.shape) != (num_virtual_tokens, hidden_size):
            raise ValueError(f"init must have shape ({num_virtual_tokens}, {hidden_size}), got {tuple(init.shape)}")
        w = init.detach().clone().float() if init is not None else torch.randn(num_virtual_tokens, hidden_size) * 0.02
        self.weight = nn.Parameter(w)

    @property
    def num_virtual_tokens(self) -> int:
        return self.weight.shape[0]

    def forward(self) -> Tensor:
        return self.weight


class PromptEncoder(nn.Module):
    """P-tuning's reparameterisation: an embedding of the virtual-token indices fed through an MLP
    (Linear-ReLU-Linear-ReLU-Linear, peft's "MLP") or a 2-layer bi-LSTM + MLP (peft's "LSTM"). ``forward()`` gives
    the (n, hidden) virtual tokens; ``export()`` freezes them into a ``SoftPrompt`` for inference."""

    def __init__(self, num_virtual_tokens: int, hidden_size: int, encoder_hidden_size: int = 128,
                 kind: str = "mlp"):
        super().__init__()
        _positive("num_virtual_tokens", num_virtual_tokens)
        _positive("hidden_size", hidden_size)
        _positive("encoder_hidden_size", encoder_hidden_size)
        if kind not in ("mlp", "lstm"):
            raise ValueError(f"kind must be 'mlp' or 'lstm', got {kind!r}")
        self.kind, d, h = kind, hidden_size, encoder_hidden_size
        self.embedding = nn.Embedding(num_virtual_tokens, d)
        if kind == "mlp":
            self.mlp_head = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d))
        else:
            self.lstm_head = nn.LSTM(d, h, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, d))

    @property
    def num_virtual_tokens(self) -> int:
        return self.embedding.num_embeddings

    def forward(self) -> Tensor:
        x = self.embedding.weight
        if self.kind == "lstm":
            x = self.lstm_head(x[None])[0][0]
        return self.mlp_head(x)

    @torch.no_grad()
    def export(self) -> SoftPrompt:
        """The encoder's output as fixed vectors: all inference needs (the encoder can be thrown away)."""
        return SoftPrompt(self.num_virtual_tokens, self.embedding.embedding_dim, init=self().detach().cpu()).to(
            self.embedding.weight.device)


class PromptClassifier(nn.Module):
    """A ``BertClassifier`` with virtual tokens placed *in front of* the input (before ``[CLS]``, where peft puts
    them): word embeddings of the input, prompt vectors prepended, the attention mask extended with ones."""

    def __init__(self, classifier: BertClassifier, prompt: SoftPrompt | PromptEncoder):
        super().__init__()
        if not isinstance(prompt, (SoftPrompt, PromptEncoder)):
            raise TypeError(f"prompt must be a SoftPrompt or a PromptEncoder, got {type(prompt).__name__}")
        self.classifier, self.prompt = classifier, prompt

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        bert = self.classifier.bert
        n, (B, T) = self.prompt.num_virtual_tokens, input_ids.shape
        limit = bert.config.max_positions
        if n + T > limit:
            raise ValueError(f"{n} virtual tokens + {T} input tokens = {n + T} > the model's maximum length {limit}; "
                             f"truncate the input to at most {limit - n} tokens (tokenizer(..., truncation=True, "
                             f"max_length={limit - n})) or use fewer virtual tokens")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        words = bert.embeddings.word(input_ids)
        prompts = self.prompt().to(words.dtype)[None].expand(B, -1, -1)
        mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], 1)
        return self.classifier(attention_mask=mask, inputs_embeds=torch.cat([prompts, words], 1))


# --------------------------------------------------------------------------- trainable parameters: choose, save, load

def trainable_only(model: nn.Module, keep) -> int:
    """Freeze every parameter whose name does not satisfy ``keep(name)``; return how many parameters train."""
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(bool(keep(name)))
        n += p.numel() if p.requires_grad else 0
    return n


def save_trainable(model: nn.Module, path: str | Path) -> Path:
    """Save only the parameters that train (``requires_grad``) to a safetensors file; return its path."""
    from safetensors.torch import save_file
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    if not state:
        raise ValueError("the model has no trainable parameter to save (every requires_grad is False)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def load_trainable(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a :func:`save_trainable` file into ``model`` (built the same way: same LoRA/adapters/prompt); every
    saved tensor must find a parameter of the same name and shape."""
    from safetensors.torch import load_file
    state, own = load_file(str(path)), dict(model.named_parameters())
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} saved tensors have no parameter in the model, e.g. {unknown[0]!r}; "
                         f"add the same LoRA/adapters/prompt to the fresh model first")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{path}: {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, the model's is "
                         f"{tuple(own[bad[0]].shape)}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return model


# --------------------------------------------------------------------------- the transformers twin (for peft)

@functools.cache
def _hf_mean_pool_class():
    from transformers import BertForSequenceClassification
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPoolBertForSequenceClassification(BertForSequenceClassification):
        """transformers' BERT classifier with our head: mean of the token vectors over the mask, dropout, Linear."""

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                    **kwargs):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          inputs_embeds=inputs_embeds).last_hidden_state
            logits = self.classifier(self.dropout(mean_pool(h, attention_mask)))
            loss = None if labels is None else F.cross_entropy(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

    return MeanPoolBertForSequenceClassification


def to_hf_classifier(classifier: BertClassifier):
    """A ``transformers.BertForSequenceClassification`` (mean-pool forward) with our weights, for ``peft``.
    Call it on the plain classifier, before LoRA or adapters are added."""
    if not isinstance(classifier, BertClassifier) or classifier.pooling != "mean":
        raise TypeError("to_hf_classifier needs a helpers.bert.BertClassifier with pooling='mean'")
    cfg = hf_config(classifier.bert.config)
    cfg.num_labels = classifier.head.out_features
    hf = _hf_mean_pool_class()(cfg).eval()
    hf.bert.load_state_dict(to_hf(classifier.bert).state_dict())
    hf.classifier.load_state_dict(classifier.head.state_dict())
    return hf.to(classifier.head.weight.device)
