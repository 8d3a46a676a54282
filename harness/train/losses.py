"""Pre-training losses, looked up by name (declared in ``harness.spec.registry.LOSSES``).

Every loss is an ``nn.Module`` called as ``loss(outputs, labels)`` and returns the mean over the
batch as a scalar tensor. ``outputs`` are the classifier's logits (B×K) for the classifier losses
(``ce``, ``label_smoothing``, ``mse``) and projection-head embeddings (B×V×E, V views per image)
for ``supcon``. Each registered loss carries a ``LossSpec`` that tells the training loop how many
augmented views per image it needs and which model output it reads, and lists its options with
their defaults, so the CLI and config can validate and document them without special cases.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.spec import registry
from harness.spec.registry import Entry, LossMeta


@dataclass(frozen=True)
class LossSpec:
    """What the registry knows about one loss.

    - ``name``: the registry key (``--loss`` value).
    - ``build``: factory ``build(num_classes, **kwargs) -> nn.Module``.
    - ``views``: augmented views per image the loss expects (2 for supcon, else 1).
    - ``needs_classifier_logits``: True if the loss reads the classifier's logits (B×K); False if
      it reads the projection-head embeddings (B×V×E).
    - ``defaults``: accepted keyword options and their defaults (read-only mapping).
    - ``summary``: one-line description (first line of the loss class's docstring).
    """

    name: str
    build: Callable[..., nn.Module]
    views: int = 1
    needs_classifier_logits: bool = True
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    summary: str = ""


def _options_of(factory: Callable[..., nn.Module]) -> dict[str, Any]:
    """The keyword-only options of a loss factory and their defaults, read from its signature so
    the registry and the constructor cannot disagree."""
    options = {}
    for p in inspect.signature(factory).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            if p.default is inspect.Parameter.empty:
                raise TypeError(f"loss option {p.name!r} of {factory!r} needs a default")
            options[p.name] = p.default
    return options


def loss_names() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(registry.LOSSES)


def get_loss_spec(name: str) -> LossSpec:
    """The ``LossSpec`` of ``name``; HarnessError listing the valid names if unknown."""
    if (bad := registry.LOSSES.problem(name)) is not None:
        raise HarnessError(bad)
    return LOSSES[name]


def build_loss(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the loss ``name`` for ``num_classes`` classes with options ``kwargs``.

    Raises HarnessError (one line) for an unknown name, an unknown option (naming the valid ones),
    a non-positive ``num_classes`` or an invalid option value."""
    spec = get_loss_spec(name)
    unknown = [k for k in kwargs if k not in spec.defaults]
    if unknown:
        valid = ", ".join(sorted(spec.defaults)) or "(none)"
        raise HarnessError(
            f"loss {name!r} got unknown option {unknown[0]!r}; valid options: {valid}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise HarnessError(
            f"loss {name!r}: num_classes must be a positive int, got {num_classes!r}"
        )
    return spec.build(num_classes, **kwargs)


# ---------------------------------------------------------------- helpers


def _real(loss: str, option: str, value: Any) -> float:
    """``value`` as a finite float, or HarnessError (bools and strings are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise HarnessError(f"loss {loss!r}: {option} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise HarnessError(f"loss {loss!r}: {option} must be finite, got {value!r}")
    return value


def _check_logits(loss: str, logits: torch.Tensor, labels: torch.Tensor, k: int) -> None:
    """Shape checks shared by the classifier losses (programming errors: ValueError)."""
    if logits.ndim != 2 or logits.shape[1] != k:
        raise ValueError(f"{loss}: expected logits of shape (B, {k}), got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"{loss}: expected labels of shape ({logits.shape[0]},), got {tuple(labels.shape)}"
        )


# ---------------------------------------------------------------- losses


class CrossEntropy(nn.Module):
    """Cross-entropy on the classifier's logits (mean over the batch)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_logits("ce", logits, labels, self.num_classes)
        return F.cross_entropy(logits, labels)


class LabelSmoothingCE(nn.Module):
    """Cross-entropy against smoothed targets (1−ε)·onehot + ε/K (mean over the batch).

    Same convention as ``F.cross_entropy(..., label_smoothing=ε)``: the ε mass is spread over all
    K classes, the true one included. Written out as (1−ε)·NLL + ε·mean_k(−log p_k) so that it is
    checked against torch rather than being torch. ``smoothing`` must lie in [0, 1)."""

    def __init__(self, num_classes: int, *, smoothing: float = 0.1) -> None:
        super().__init__()
        eps = _real("label_smoothing", "smoothing", smoothing)
        if not 0.0 <= eps < 1.0:
            raise HarnessError(f"loss 'label_smoothing': smoothing must be in [0, 1), got {eps}")
        self.num_classes = num_classes
        self.smoothing = eps

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_logits("label_smoothing", logits, labels, self.num_classes)
        logp = F.log_softmax(logits, dim=1)
        nll = -logp.gather(1, labels.long().unsqueeze(1)).squeeze(1)
        uniform = -logp.mean(dim=1)
        return ((1.0 - self.smoothing) * nll + self.smoothing * uniform).mean()


class MSELoss(nn.Module):
    """Squared error between logits and scaled one-hot targets, summed over classes.

    Normalisation: ``((logits - scale * onehot) ** 2).sum(dim=1).mean()``, i.e. the sum over the K
    classes and the mean over the B samples (not divided by K, unlike ``F.mse_loss``). ``scale``
    (default 1.0) is the target value of the true class; the other targets are 0."""

    def __init__(self, num_classes: int, *, scale: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = _real("mse", "scale", scale)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_logits("mse", logits, labels, self.num_classes)
        target = F.one_hot(labels.long(), self.num_classes).to(logits.dtype) * self.scale
        return ((logits - target) ** 2).sum(dim=1).mean()


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, L_out) on projection-head embeddings.

    Input: embeddings (B, V, E), V ≥ 1 views per image (L2-normalised here), labels (B,). All
    N = B·V embeddings are anchors. For anchor i with positives P(i) = {j ≠ i : y_j = y_i}:
    loss_i = −(1/|P(i)|) Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) ).
    The result is the mean of loss_i over anchors with |P(i)| ≥ 1; if none has a positive, it is
    0 (still attached to the graph). The denominator is a log-sum-exp (stable for small τ).
    Half-precision inputs are computed in float32. ``temperature`` τ must be > 0."""

    def __init__(self, num_classes: int, *, temperature: float = 0.1) -> None:
        super().__init__()
        tau = _real("supcon", "temperature", temperature)
        if tau <= 0.0:
            raise HarnessError(f"loss 'supcon': temperature must be > 0, got {tau}")
        self.num_classes = num_classes
        self.temperature = tau

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 3:
            raise ValueError(
                f"supcon: expected embeddings of shape (B, V, E), got {tuple(embeddings.shape)}"
            )
        b, v, e = embeddings.shape
        if labels.shape != (b,):
            raise ValueError(f"supcon: expected labels of shape ({b},), got {tuple(labels.shape)}")
        x = embeddings
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        z = F.normalize(x.reshape(b * v, e), dim=1)  # row i = image i // v, view i % v
        y = labels.repeat_interleave(v)
        n = b * v
        self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
        positives = (y[:, None] == y[None, :]) & ~self_mask
        counts = positives.sum(dim=1)
        has_pos = counts > 0
        if not bool(has_pos.any()):
            return x.sum() * 0.0
        sim = (z @ z.T) / self.temperature
        log_denom = torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
        log_prob = sim - log_denom  # finite everywhere: the self term is only masked out below
        pos_sum = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        per_anchor = -pos_sum[has_pos] / counts[has_pos].to(z.dtype)
        return per_anchor.mean()


def _spec_of(entry: Entry[LossMeta]) -> LossSpec:
    """The ``LossSpec`` of a registry entry; its options must be the constructor's keyword-only
    parameters (a developer error otherwise, raised on import)."""
    cls = entry.load()
    assert isinstance(cls, type) and issubclass(cls, nn.Module)
    options = _options_of(cls)
    if options != dict(entry.meta.options):
        raise TypeError(
            f"loss {entry.name!r}: options {options} of {entry.target} differ from the "
            f"registry's {dict(entry.meta.options)}"
        )
    doc = inspect.getdoc(cls) or ""
    return LossSpec(
        name=entry.name,
        build=cls,
        views=entry.meta.views,
        needs_classifier_logits=entry.meta.needs_classifier_logits,
        defaults=MappingProxyType(options),
        summary=doc.splitlines()[0] if doc else "",
    )


# every loss of ``harness.spec.registry.LOSSES`` (all are defined in this module)
LOSSES: dict[str, LossSpec] = {e.name: _spec_of(e) for e in registry.LOSSES.entries()}
