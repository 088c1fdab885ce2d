"""Model compression (chapter 10): the knowledge-distillation loss, structured pruning that physically rebuilds a
smaller network (the pruned units' constant contribution folded into the next layer's bias), attention-head
importance (Michel et al., 2019) and head selection for ``helpers.bert.Bert.prune_heads``, and size/latency probes."""
from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["check_amount", "soft_targets", "kd_loss", "unit_norms", "keep_by_norm", "kept_units", "shrink_pair",
           "classifier_logits", "head_importance", "heads_to_prune", "count_heads", "serialized_kb", "latency_ms"]


# --------------------------------------------------------------------------- checks

def check_amount(amount) -> float:
    """A pruning amount must be a fraction in [0, 1) (1 would remove everything); returns it as a float."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"amount must be a fraction in [0, 1) of the weights/units to remove, got {amount!r}; "
                         f"e.g. 0.5 removes half")
    return float(amount)


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0 (1 = the plain softmax, 2-4 is usual for distillation), "
                         f"got {temperature!r}")
    return float(temperature)


# --------------------------------------------------------------------------- distillation

def soft_targets(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """softmax(logits / T) over the last dimension: a higher T gives a softer distribution."""
    t = _check_temperature(temperature)
    return F.softmax(logits / t, dim=-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None, temperature: float = 2.0,
            alpha: float = 0.5) -> Tensor:
    """Hinton et al. (2015): ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, labels)``.

    The KL is summed over the classes and averaged over the batch (``nn.KLDivLoss(reduction="batchmean")``); T²
    keeps the soft term's gradient on the scale of the hard one. ``alpha=1`` is pure distillation (no labels
    needed). The teacher's logits are detached."""
    t = _check_temperature(temperature)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha (the weight of the distillation term) must be in [0, 1], got {alpha!r}")
    if not isinstance(student_logits, Tensor) or not isinstance(teacher_logits, Tensor):
        raise TypeError("student_logits and teacher_logits must be tensors (batch, num_classes)")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"student and teacher logits must both be (batch, num_classes) with the same shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}; compute the teacher's "
                         f"logits on the same batch, for the same classes")
    if alpha < 1 and labels is None:
        raise ValueError(f"alpha={alpha} < 1 gives the hard-label cross-entropy weight {1 - alpha:g}: pass labels, "
                         f"or alpha=1 for pure distillation")
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
    loss = alpha * t * t * kl
    if alpha < 1:
        if labels.shape != student_logits.shape[:1]:
            raise ValueError(f"labels must be (batch,) = ({student_logits.shape[0]},), got {tuple(labels.shape)}")
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


# --------------------------------------------------------------------------- structured pruning

def unit_norms(layer: nn.Module, p: float = 2) -> Tensor:
    """The L_p norm of each output unit's weights: per output channel of a Conv2d, per output neuron of a Linear."""
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"unit_norms needs an nn.Conv2d or nn.Linear, got {type(layer).__name__}")
    return layer.weight.detach().flatten(1).norm(p=p, dim=1)


def keep_by_norm(layer: nn.Module, amount: float, p: float = 2) -> Tensor:
    """Sorted indices of the output units to keep: the ``1 - amount`` share with the largest L_p norm (at least one)."""
    amount = check_amount(amount)
    norms = unit_norms(layer, p)
    n_keep = max(1, len(norms) - round(amount * len(norms)))
    return norms.topk(n_keep).indices.sort().values


def kept_units(weight: Tensor) -> Tensor:
    """Sorted indices of the output units whose weights are not all zero (e.g. after ``prune.ln_structured``)."""
    return weight.detach().flatten(1).ne(0).any(1).nonzero().flatten()


@torch.no_grad()
def shrink_pair(layer: nn.Module, next_layer: nn.Module, keep: Tensor,
                activation: Callable[[Tensor], Tensor] = F.relu) -> tuple[nn.Module, nn.Module]:
    """Physically remove output units of ``layer`` (keeping ``keep``) and the matching inputs of ``next_layer``.

    A pruned unit whose weights are zero still outputs the constant ``activation(bias)``; its contribution to
    ``next_layer`` is folded into ``next_layer``'s bias, so the smaller pair computes exactly what the masked pair did.
    ``layer``: Conv2d or Linear. ``next_layer``: a Conv2d without padding (a constant input then adds the same
    amount at every position), or a Linear whose inputs are ``layer``'s units, or its channels flattened
    (channel-major, as ``nn.Flatten`` after a Conv2d). Whatever sits in between must map a constant map to the same
    constant (max-pooling does; zero-padding would not). Returns new modules; the originals are unchanged."""
    if not isinstance(layer, (nn.Conv2d, nn.Linear)) or not isinstance(next_layer, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"shrink_pair needs Conv2d/Linear layers, got {type(layer).__name__} and "
                        f"{type(next_layer).__name__}")
    n_out = layer.weight.shape[0]
    keep = torch.as_tensor(keep, dtype=torch.long, device=layer.weight.device).flatten()
    if keep.numel() == 0:
        raise ValueError("keep is empty: at least one unit must stay")
    if keep.min() < 0 or keep.max() >= n_out or keep.unique().numel() != keep.numel():
        raise ValueError(f"keep must hold distinct unit indices in [0, {n_out}), got {keep.tolist()[:10]}...")
    keep = keep.sort().values
    drop = torch.tensor([i for i in range(n_out) if i not in set(keep.tolist())], dtype=torch.long,
                        device=keep.device)
    bias = layer.bias if layer.bias is not None else torch.zeros(n_out, device=layer.weight.device)
    const = activation(bias[drop])  # what each dropped unit outputs, whatever the input
    if isinstance(next_layer, nn.Conv2d):
        if next_layer.in_channels != n_out or next_layer.groups != 1:
            raise ValueError(f"next_layer has {next_layer.in_channels} input channels (groups={next_layer.groups}), "
                             f"layer has {n_out} outputs; they must match, with groups=1")
        if any(next_layer.padding) if isinstance(next_layer.padding, tuple) else next_layer.padding != "valid":
            raise ValueError(f"next_layer has padding={next_layer.padding}: zero-padding makes a pruned channel's "
                             f"constant contribution differ at the border, so it cannot be folded into the bias; "
                             f"use padding=0, or prune the bias too")
        w = next_layer.weight  # (out, in, kh, kw)
        fold = (w[:, drop].sum((2, 3)) * const).sum(1)
        new_next = nn.Conv2d(len(keep), next_layer.out_channels, next_layer.kernel_size, next_layer.stride, 0,
                             next_layer.dilation, bias=True, device=w.device, dtype=w.dtype)
        new_next.weight.copy_(w[:, keep])
    else:
        if next_layer.in_features % n_out:
            raise ValueError(f"next_layer has {next_layer.in_features} inputs, not a multiple of layer's {n_out} "
                             f"outputs")
        per = next_layer.in_features // n_out  # positions per channel (1 for Linear -> Linear)
        w = next_layer.weight.view(next_layer.out_features, n_out, per)
        fold = (w[:, drop].sum(2) * const).sum(1)
        new_next = nn.Linear(len(keep) * per, next_layer.out_features, bias=True, device=w.device, dtype=w.dtype)
        new_next.weight.copy_(w[:, keep].reshape(next_layer.out_features, -1))
    old_b = next_layer.bias if next_layer.bias is not None else torch.zeros_like(fold)
    new_next.bias.copy_(old_b + fold)
    if isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(layer.in_channels, len(keep), layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                        layer.groups, bias=layer.bias is not None, device=layer.weight.device,
                        dtype=layer.weight.dtype)
    else:
        new = nn.Linear(layer.in_features, len(keep), bias=layer.bias is not None, device=layer.weight.device,
                        dtype=layer.weight.dtype)
    new.weight.copy_(layer.weight[keep])
    if layer.bias is not None:
        new.bias.copy_(layer.bias[keep])
    return new, new_next


# --------------------------------------------------------------------------- attention heads

def classifier_logits(model: nn.Module, ids: Tensor, attention_mask: Tensor, head_mask=None) -> Tensor:
    """Logits of a ``helpers.bert.BertClassifier`` with a ``head_mask`` ((layers, heads), 0 removes a head) passed to
    its encoder; equal to ``model(ids, attention_mask)`` when ``head_mask`` is None."""
    from .bert import BertClassifier, mean_pool
    if not isinstance(model, BertClassifier):
        raise TypeError(f"classifier_logits needs a helpers.bert.BertClassifier, got {type(model).__name__}")
    h = model.bert(ids, attention_mask, head_mask=head_mask)
    z = mean_pool(h, attention_mask) if model.pooling == "mean" else model.bert.pool(h)
    return model.head(model.drop(z))


def count_heads(model: nn.Module) -> list[int]:
    """Number of attention heads in each layer of a BertClassifier (or Bert)."""
    bert = getattr(model, "bert", model)
    return [b.self_attn.n_heads for b in bert.blocks]


def head_importance(model: nn.Module, batches: Iterable, normalize: bool = True) -> Tensor:
    """Michel et al. (2019): the importance of head h is |∂L/∂ξ_h| for a gate ξ_h = 1 multiplying its output, i.e.
    |Σ_tokens ⟨head output, ∂L/∂head output⟩|, taken per batch and summed over ``batches`` of
    ``(ids, attention_mask, labels)``. Returns (layers, heads); ``normalize`` divides each layer by its L2 norm
    (as the paper's code does). The model is put in eval mode; its parameters get no gradient."""
    heads = count_heads(model)
    if len(set(heads)) != 1:
        raise ValueError(f"head_importance needs the same number of heads in every layer, got {heads}")
    model.eval()
    gate = torch.ones(len(heads), heads[0], requires_grad=True, device=next(model.parameters()).device)
    score = torch.zeros(len(heads), heads[0], device=gate.device)
    n = 0
    for ids, am, y in batches:
        loss = F.cross_entropy(classifier_logits(model, ids, am, head_mask=gate), y)
        (g,) = torch.autograd.grad(loss, gate)
        score += g.abs() * len(y)
        n += 1
    if n == 0:
        raise ValueError("batches is empty: pass some (ids, attention_mask, labels) batches")
    if normalize:
        score = score / score.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return score.detach()


def heads_to_prune(scores: Tensor, n: int) -> dict[int, list[int]]:
    """The ``n`` heads with the lowest ``scores`` (layers, heads), as ``{layer: [heads]}`` for
    ``helpers.bert.Bert.prune_heads``. Raises ValueError if that would remove every head of a layer."""
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise ValueError(f"scores must be a (layers, heads) tensor, got "
                         f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}")
    L, H = scores.shape
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < L * H:
        raise ValueError(f"n must be an int in [0, {L * H}) (the model has {L}×{H} heads), got {n!r}")
    order = scores.flatten().argsort()[:n].tolist()
    plan: dict[int, list[int]] = {}
    for i in order:
        plan.setdefault(i // H, []).append(i % H)
    full = [layer for layer, hs in plan.items() if len(hs) == H]
    if full:
        raise ValueError(f"removing these {n} heads would remove every head of layer(s) {sorted(full)}; an attention "
                         f"layer needs at least one head: remove fewer heads, or drop the whole layer instead")
    return {layer: sorted(hs) for layer, hs in sorted(plan.items())}


# --------------------------------------------------------------------------- size and speed

def serialized_kb(obj) -> float:
    """Size in KB of ``torch.save(obj)`` (a state_dict, tensor or module)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell() / 1024


@torch.inference_mode()
def latency_ms(fn: Callable[[], object], repeat: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of ``fn()`` over ``repeat`` calls, after ``warmup`` calls."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)
