"""A timm backbone as an ordered list of separately runnable ``Stage``s, one per block.

Fine-tuning block L needs to run the frozen prefix before it, the block and the rest on their own,
and to know which weights each piece owns. A registry keyed by timm model class gives each
architecture's decomposition; ``decompose`` checks it against the model's layer registry
(``models.model_layers``, block granularity) and its weights. A method may name one block
(``layer3.1``, ``blocks.7``) or a whole stage (``layer3``: all its blocks); ``select`` resolves
either to stage indices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from harness import models
from harness.errors import HarnessError


@dataclass
class Stage:
    """One piece of a backbone: ``run`` maps the previous stage's output to this stage's output.

    ``modules`` and ``params`` own its weights (what freezing and train/eval mode act on).
    ``selectable`` stages are the layer-registry blocks a method may fine-tune; glue stages (the
    ViT embedding, the head pooling named ``pre_logits``) are not. ``group`` is the timm stage a
    block belongs to (``layer3`` for ``layer3.1``; the block's own name otherwise).
    ``penultimate``: pooling this block's output gives exactly the penultimate (``pre_logits``)
    features, decided from the structure (nothing but the same pooling follows it), so an SCL
    skip from it would only repeat them."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    modules: tuple[nn.Module, ...] = ()
    params: tuple[nn.Parameter, ...] = ()
    selectable: bool = True
    group: str = ""
    penultimate: bool = False

    def __post_init__(self) -> None:
        self.group = self.group or self.name

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()] + list(self.params)

    def tensors(self) -> list[torch.Tensor]:
        """Parameters and buffers (e.g. BatchNorm running statistics)."""
        return self.parameters() + [b for m in self.modules for b in m.buffers()]

    def train(self, mode: bool) -> None:
        for m in self.modules:
            m.train(mode)


DECOMPOSERS: dict[type, Callable[[Any], list[Stage]]] = {}


def register_stages(cls: type) -> Callable[[Callable[[Any], list[Stage]]], Callable]:
    """Register ``fn(backbone) -> stages`` for timm model class ``cls`` (and its subclasses)."""

    def deco(fn: Callable[[Any], list[Stage]]) -> Callable[[Any], list[Stage]]:
        DECOMPOSERS[cls] = fn
        return fn

    return deco


def _is_identity(mod: nn.Module | None) -> bool:
    return mod is None or isinstance(mod, nn.Identity)


@register_stages(ResNet)
def _resnet_stages(m: ResNet) -> list[Stage]:
    """Stem (conv1, bn1, act1) as block ``act1``; each residual block ``layerN.i`` (the max-pool
    opens ``layer1.0``); then the head's global pooling (``forward_head(pre_logits=True)``). With
    a global *average* pool the last block's pooled output is pre_logits itself."""
    stages = [Stage("act1", lambda x: m.act1(m.bn1(m.conv1(x))), (m.conv1, m.bn1, m.act1))]
    for n in ("layer1", "layer2", "layer3", "layer4"):
        for i, blk in enumerate(getattr(m, n)):
            if (n, i) == ("layer1", 0):
                stages.append(
                    Stage(f"{n}.{i}", lambda x, b=blk: b(m.maxpool(x)), (m.maxpool, blk), group=n)
                )
            else:
                stages.append(Stage(f"{n}.{i}", blk, (blk,), group=n))
    pool_type = str(getattr(m.global_pool, "pool_type", ""))
    stages[-1].penultimate = pool_type == "fast" or pool_type.endswith("avg")
    head = (m.global_pool, m.fc)
    stages.append(
        Stage(models.PRE_LOGITS, lambda x: m.forward_head(x, pre_logits=True), head, (), False)
    )
    return stages


@register_stages(VisionTransformer)
def _vit_stages(m: VisionTransformer) -> list[Stage]:
    """Patch embedding + position embedding + patch dropout + pre-norm as a glue stage before
    ``blocks.0``; each block; then the final norm and the head's token pooling. The last block's
    pooled output is pre_logits only when no norm or attention pool follows it."""

    def embed(x: torch.Tensor) -> torch.Tensor:
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    tokens = tuple(p for p in (m.cls_token, m.reg_token, m.pos_embed) if p is not None)
    embed_mods = (m.patch_embed, m.pos_drop, m.patch_drop, m.norm_pre)
    stages = [Stage("embed", embed, embed_mods, tokens, False)]
    stages += [Stage(f"blocks.{i}", blk, (blk,)) for i, blk in enumerate(m.blocks)]
    stages[-1].penultimate = all(
        _is_identity(getattr(m, a, None)) for a in ("norm", "fc_norm", "attn_pool")
    )
    head = tuple(
        mod for mod in (m.norm, m.attn_pool, m.fc_norm, m.head_drop, m.head) if mod is not None
    )
    stages.append(
        Stage(
            models.PRE_LOGITS,
            lambda x: m.forward_head(m.norm(x), pre_logits=True),
            head,
            (),
            False,
        )
    )
    return stages


def decompose(backbone: nn.Module) -> list[Stage]:
    """The stages of a timm backbone, checked against its layer registry and its weights: the
    selectable stages are exactly the registry's blocks, and every parameter and buffer belongs
    to exactly one stage."""
    fn = next((DECOMPOSERS[c] for c in type(backbone).__mro__ if c in DECOMPOSERS), None)
    if fn is None:
        known = ", ".join(sorted(c.__name__ for c in DECOMPOSERS))
        raise HarnessError(
            f"no stage decomposition for {type(backbone).__name__}; supported: {known}"
        )
    stages = fn(backbone)
    registry = [ly.name for ly in models.model_layers(backbone) if ly.kind == "feature"]
    names = [s.name for s in stages if s.selectable]
    if names != registry:
        raise HarnessError(
            f"{type(backbone).__name__}: stages {names} do not match its layers {registry}"
        )
    owned = [id(t) for s in stages for t in s.tensors()]
    every = [*backbone.parameters(), *backbone.buffers()]
    if sorted(owned) != sorted(id(t) for t in every):
        raise HarnessError(f"{type(backbone).__name__}: stages do not cover its weights once each")
    return stages


def choices(stages: list[Stage], skip: bool = False) -> list[str]:
    """The names a method may select: every block, then every stage of several blocks (all its
    blocks train). With ``skip`` (SCL) a selection whose last block is ``penultimate`` is left
    out: its skip connection would carry the penultimate features a second time."""
    blocks = [s for s in stages if s.selectable]
    groups = [
        g for g in dict.fromkeys(s.group for s in blocks) if g not in {s.name for s in blocks}
    ]
    names = [s.name for s in blocks] + groups
    return [n for n in names if not (skip and stages[select(stages, n)[-1]].penultimate)]


def select(stages: list[Stage], name: str) -> list[int]:
    """Indices of the stages ``name`` selects: one block, or every block of a stage (in order);
    [] for an unknown name."""
    one = [i for i, s in enumerate(stages) if s.selectable and s.name == name]
    return one or [i for i, s in enumerate(stages) if s.selectable and s.group == name]


def run_stages(
    stages: list[Stage], x: torch.Tensor, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """Run ``stages[start:stop]`` in sequence."""
    for st in stages[start:stop]:
        x = st.run(x)
    return x
