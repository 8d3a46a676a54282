"""Fine-tuning methods (DESIGN §4) and the network each one trains.

A ``Method`` says which stages of a backbone train; ``FinetuneNet`` is a backbone, run as stages,
plus a fresh linear classifier, with everything before the first trained stage frozen so that its
output can be cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness import models
from harness.errors import HarnessError
from harness.finetune.stages import Stage, choices, decompose, run_stages, select
from harness.spec import registry
from harness.spec.registry import MethodMeta


@dataclass(frozen=True)
class Method:
    """A fine-tuning method as the trainer sees it: its registry entry
    (``harness.spec.registry.METHODS``: what trains, whether it needs layer L, whether the
    classifier also reads block L, the SCL skip connection; for a whole stage, its last
    block's)."""

    name: str
    meta: MethodMeta
    doc: str = ""

    @property
    def needs_layer(self) -> bool:
        return self.meta.needs_layer

    @property
    def skip(self) -> bool:
        return self.meta.skip

    def trains(self, stages: list[Stage], layer_blocks: list[int]) -> set[int]:
        """The indices of the stages that train, given the blocks layer L selects."""
        rule = self.meta.trains
        if rule == "all":
            return set(range(len(stages)))
        return set(layer_blocks) if rule == "layer" else set()


METHODS: dict[str, Method] = {
    e.name: Method(e.name, e.meta, e.doc) for e in registry.METHODS.entries()
}


def method_of(name: str) -> Method:
    """The ``Method`` of ``name``; an unknown name is the registry's one line."""
    if (bad := registry.METHODS.problem(name)) is not None:
        raise HarnessError(bad)
    return METHODS[name]


def layer_problem(
    stages: list[Stage], method: Method, layer: str | None, arch: str = "this model"
) -> str | None:
    """Why ``layer`` is not a valid block L for ``method`` on these stages of ``arch`` (one
    line, naming the valid choices), or None when it is."""
    valid = choices(stages, method.skip)
    if not method.needs_layer:
        if layer is None:
            return None
        return f"method {method.name} fine-tunes no single layer; leave layer unset (got {layer!r})"
    if layer is None:
        return f"method {method.name} needs a layer of {arch}; valid: {', '.join(valid)}"
    if layer in valid:
        return None
    if method.skip and layer in choices(stages):
        return (
            f"method {method.name} cannot use layer {layer!r} of {arch}: its pooled output is "
            f"the penultimate features, so the skip would repeat them; valid: {', '.join(valid)}"
        )
    return f"unknown layer {layer!r} for method {method.name} on {arch}; valid: {', '.join(valid)}"


def check_layer(model: nn.Module, method: str, layer: str | None) -> None:
    """Raise a one-line HarnessError unless ``layer`` is a valid block L for ``method`` on
    ``model`` (a ``PretrainNet`` or a timm backbone); needs no data and no forward pass."""
    backbone = model.backbone if isinstance(model, models.PretrainNet) else model
    bad = layer_problem(decompose(backbone), method_of(method), layer, type(backbone).__name__)
    if bad is not None:
        raise HarnessError(bad)


def scl_blocks(model: nn.Module) -> list[str]:
    """The single blocks SCL can use on ``model``, the candidates of ``layer: auto``: no whole
    stage, not the block whose pooled output is the penultimate features, and not a stem (a
    block that reads the raw image, as ResNet's ``act1``: too shallow to be a transfer layer)."""
    backbone = model.backbone if isinstance(model, models.PretrainNet) else model
    stages = decompose(backbone)
    usable = set(choices(stages, skip=True))
    return [s.name for s in stages[1:] if s.selectable and s.name in usable]


def _train_only(backbone: nn.Module, stages: list[Stage]) -> None:
    """Gradients only for the parameters of ``stages``; the backbone starts in eval mode."""
    for p in backbone.parameters():
        p.requires_grad_(False)
    for st in stages:
        for p in st.parameters():
            p.requires_grad_(True)
    backbone.eval()


class FinetuneNet(nn.Module):
    """A backbone (run as stages) plus a fresh linear classifier, set up for one method.

    Stages before ``start`` (the first trained stage) are frozen: ``prefix`` runs them in eval
    mode without gradients, and their output is what ``forward`` takes (and what the activation
    cache stores). Frozen stages stay in eval mode also under ``train()``. ``layer`` is what the
    method was given (a block or a whole stage); ``read_layer`` the block whose pooled output
    the features carry (the stage's last block), pooled by ``pool`` (``auto``: the backbone's own
    pooling, ``models.default_pool``)."""

    def __init__(
        self,
        backbone: nn.Module,
        method: str,
        layer: str | None,
        num_classes: int,
        example: torch.Tensor,
        pool: str = models.AUTO_POOL,
    ):
        super().__init__()
        self.backbone = backbone
        self.method = method_of(method)
        self.pool = models.resolve_pool(backbone, pool)
        self.n_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
        self.stages = decompose(backbone)
        bad = layer_problem(self.stages, self.method, layer, type(backbone).__name__)
        if bad is not None:
            raise HarnessError(bad)
        self.layer = layer
        selected = select(self.stages, layer) if layer is not None else []
        self.layer_index = selected[-1] if selected else None
        self.read_layer = self.stages[selected[-1]].name if selected else None
        self.trainable = sorted(self.method.trains(self.stages, selected))
        self.start = self.trainable[0] if self.trainable else len(self.stages)
        _train_only(backbone, [self.stages[i] for i in self.trainable])
        self.classifier = nn.Linear(self._classifier_width(example), num_classes)
        self.train()

    @torch.no_grad()
    def _classifier_width(self, example: torch.Tensor) -> int:
        """Width of the classifier input, from a dry run of ``example``."""
        h = run_stages(self.stages, example, 0, self.start)
        return self.classifier_input(self.features(h)).shape[1]

    def train(self, mode: bool = True) -> FinetuneNet:
        super().train(mode)
        trains = set(self.trainable)
        for i, st in enumerate(self.stages):
            st.train(mode and i in trains)
        # timm's ResNet.forward_head reads the container's own flag (head dropout): it belongs
        # to the head stage.
        self.backbone.training = mode and len(self.stages) - 1 in trains
        return self

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the frozen stages before ``start`` (deterministic: eval mode, no grad)."""
        return run_stages(self.stages, x, 0, self.start).float()

    def features(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """From the prefix output: {``read_layer``: its pooled output (when L is set),
        pre_logits: ...}."""
        out: dict[str, torch.Tensor] = {}
        for i in range(self.start, len(self.stages)):
            h = self.stages[i].run(h)
            if i == self.layer_index:
                out[self.stages[i].name] = models.pool_features(h, self.pool, self.n_prefix_tokens)
        out[models.PRE_LOGITS] = h.flatten(1)
        return out

    def classifier_input(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """pre_logits, or concat(pool(block L), pre_logits) for the skip connection."""
        if self.method.skip:
            return torch.cat([feats[self.read_layer], feats[models.PRE_LOGITS]], dim=1)
        return feats[models.PRE_LOGITS]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from the prefix output ``h`` (the input itself when nothing is frozen first)."""
        return self.classifier(self.classifier_input(self.features(h)))

    def trained_state(self) -> dict[str, torch.Tensor]:
        """A copy of the tensors training can change (trained stages, classifier)."""
        own = {id(t) for i in self.trainable for t in self.stages[i].tensors()}
        own |= {id(t) for t in [*self.classifier.parameters(), *self.classifier.buffers()]}
        state = self.state_dict(keep_vars=True)
        return {k: v.detach().clone() for k, v in state.items() if id(v) in own}


def build_net(
    model: nn.Module,
    method: str,
    layer: str | None,
    num_classes: int,
    input_shape: tuple[int, int, int],
    pool: str = models.AUTO_POOL,
) -> FinetuneNet:
    """The fine-tuning network of ``model`` (a ``PretrainNet`` or a timm model; its own head is
    dropped) for ``method``; ``input_shape`` (C, H, W) sizes the classifier by a dry run."""
    backbone = model.backbone if isinstance(model, models.PretrainNet) else model
    backbone.reset_classifier(0)
    example = torch.zeros(1, *input_shape)
    try:
        return FinetuneNet(backbone, method, layer, num_classes, example, pool)
    except (RuntimeError, AssertionError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HarnessError(
            f"{type(backbone).__name__} cannot run on {'×'.join(map(str, input_shape))} "
            f"inputs: {first[:160]}"
        ) from None
