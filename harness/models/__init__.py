"""Models: timm architectures adapted to small inputs, tiny presets, checkpoints, and the
layer registry (which features of which layers NC is measured on)."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.spec import registry
from harness.spec.trial import AUTO_POOL, POOLS
from harness.store.fileio import atomic_write

CHECKPOINT_FORMAT = "harness-checkpoint-v1"


def _small_resnet_stem(model: nn.Module, in_chans: int, stem_width: int) -> nn.Module:
    """3×3 stride-1 stem for small images (28–32 px): keeps spatial detail that a 7×7/2 stem
    plus max-pool would throw away; the max-pool stays so stage 1 runs at half resolution."""
    model.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False)
    return model


def resnet_tiny(num_classes: int, in_chans: int = 1, img_size: int = 28, **kw: Any) -> nn.Module:
    """timm ResNet, BasicBlock [2,2,5,5], stage widths 16-24-32-32 after timm's 64-channel stem
    (~0.22 M params).

    Deep and narrow so that per-block fine-tuning matches the paper's regime: every block SCL may
    use holds at most ~9% of the parameters (the last block, which SCL refuses, is no larger
    than its neighbours). The low-resolution stages carry the depth, so an epoch costs about what
    the former [1,1,1,1] 16-128 preset did."""
    from timm.models.resnet import BasicBlock, ResNet

    m = ResNet(
        BasicBlock,
        [2, 2, 5, 5],
        channels=(16, 24, 32, 32),
        in_chans=in_chans,
        num_classes=num_classes,
        **kw,
    )
    return _small_resnet_stem(m, in_chans, m.conv1.out_channels)


def vit_tiny(num_classes: int, in_chans: int = 1, img_size: int = 28, **kw: Any) -> nn.Module:
    """timm VisionTransformer, depth 12, dim 48, 3 heads, MLP ratio 2, patch 7 (16 tokens + CLS
    at 28 px), classifying from CLS: each block is ~8% of the parameters (per-block fine-tuning
    at the paper's fractions)."""
    from timm.models.vision_transformer import VisionTransformer

    patch = 7 if img_size % 7 == 0 else (4 if img_size % 4 == 0 else 2)
    kw.setdefault("global_pool", "token")
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch,
        embed_dim=48,
        depth=12,
        num_heads=3,
        mlp_ratio=2.0,
        in_chans=in_chans,
        num_classes=num_classes,
        **kw,
    )


def create_model(
    arch: str, num_classes: int, in_chans: int = 3, img_size: int = 32, **kw: Any
) -> nn.Module:
    """A tiny preset by name, or any timm architecture (random init) adapted to the input."""
    if arch in registry.ARCHS:
        preset = registry.ARCHS.load(arch)
        assert callable(preset)
        return preset(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kw)
    import timm

    if not timm.is_model(arch):
        raise HarnessError(registry.ARCHS.unknown(arch) + " (timm.list_models())")
    args: dict[str, Any] = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw)
    try:
        model = timm.create_model(arch, img_size=img_size, **args)
    except TypeError:
        model = timm.create_model(arch, **args)
    if img_size <= 64 and isinstance(getattr(model, "conv1", None), nn.Conv2d):
        stem = model.conv1
        if stem.kernel_size[0] >= 7 and stem.in_channels == in_chans:
            model = _small_resnet_stem(model, in_chans, stem.out_channels)
    return model


class PretrainNet(nn.Module):
    """timm backbone → optional projection head (depth 0–3) → linear classifier.

    The representation used for transfer (``pre_logits`` in the layer registry) is the backbone's
    pooled output, i.e. the projection head's *input*. ``head_depth`` = 0 puts the classifier
    straight on it; otherwise the head is (depth−1) × [Linear, BatchNorm1d, ReLU] + Linear to
    ``head_dim``, and the classifier (or the supcon loss) reads the head's output.
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, head_depth: int = 0, head_dim: int = 128
    ):
        super().__init__()
        if not 0 <= head_depth <= 3:
            raise HarnessError(f"head_depth must be 0..3, got {head_depth}")
        self.backbone = backbone
        self.backbone.reset_classifier(0)
        self.head_depth = head_depth
        width = backbone.num_features
        layers: list[nn.Module] = []
        for i in range(head_depth):
            layers.append(nn.Linear(width, head_dim))
            width = head_dim
            if i < head_depth - 1:
                layers += [nn.BatchNorm1d(head_dim), nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*layers) if layers else nn.Identity()
        self.classifier = nn.Linear(width, num_classes)
        self.num_features = backbone.num_features
        self.feature_info = backbone.feature_info

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The transfer representation: pooled backbone features."""
        return self.backbone(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Projection-head output (what supcon contrasts)."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor, embed: bool = False):
        """Logits; with ``embed=True`` (supcon) the embedding and the logits of a classifier
        trained on the *detached* embedding (an online linear probe for source accuracy)."""
        e = self.embed(x)
        if embed:
            return e, self.classifier(e.detach())
        return self.classifier(e)

    # the timm-style interface LayerFeatures relies on
    def forward_intermediates(self, x, **kw):
        return self.backbone.forward_intermediates(x, **kw)

    def forward_features(self, x):
        return self.backbone.forward_features(x)

    def forward_head(self, x, pre_logits: bool = False):
        pre = self.backbone.forward_head(x, pre_logits=True)
        return pre if pre_logits else self.classifier(self.head(pre))

    def head_logits(self, pre: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(pre))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    @property
    def num_prefix_tokens(self) -> int:
        return getattr(self.backbone, "num_prefix_tokens", 0)


def build_network(
    arch: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    head_depth: int = 0,
    head_dim: int = 128,
    **kw: Any,
) -> PretrainNet:
    """Backbone by name (preset or timm) wrapped with a projection head and classifier."""
    backbone = create_model(arch, num_classes, in_chans, img_size, **kw)
    return PretrainNet(backbone, num_classes, head_depth, head_dim)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    model_kwargs: dict | None = None,
    meta: dict | None = None,
    extra: dict | None = None,
    previous: str | os.PathLike | None = None,
) -> Path:
    """Atomically write (and fsync) a checkpoint that ``load_checkpoint`` rebuilds with
    weights_only=True. ``previous``: where the file at ``path`` until now is kept (see
    ``atomic_write``). A full disk is one HarnessError naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = dict(
        format=CHECKPOINT_FORMAT,
        arch=arch,
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size,
        model_kwargs=model_kwargs or {},
        meta=meta or {},
        state_dict=model.state_dict(),
        **(extra or {}),
    )

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: a full disk surfaces as OSError(ENOSPC)
            torch.save(obj, fh)

    return atomic_write(path, write, fsync=True, previous=previous)


def _load_failure(e: Exception) -> str:
    """torch.load's reason in a few words: its first sentence, or what the weights-only
    unpickler objected to (a truncated file, garbage, an empty file)."""
    text, lead = str(e), ""
    if "WeightsUnpickler error:" in text:
        text, lead = text.split("WeightsUnpickler error:", 1)[1], "unpickling failed: "
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not lead and " " not in first:  # a bare key or number says little without its type
        lead = f"{type(e).__name__}: " if first else type(e).__name__
    return (lead + first.split(". ")[0])[:160]


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict safely (weights_only); anything else is one clear error."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(path.glob("*.pt"))
        example = inside[0] if inside else "<results>/checkpoints/<run id>/last.pt"
        raise HarnessError(
            f"checkpoint {path}: is a folder; give a checkpoint file, e.g. {example}"
        )
    if not path.is_file():
        raise HarnessError(f"checkpoint {path}: no such file")
    try:
        with warnings.catch_warnings():  # torch warns on odd pickles; the error line says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise HarnessError(
            f"checkpoint {path}: not a loadable torch checkpoint ({_load_failure(e)})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise HarnessError(
            f"checkpoint {path}: not a harness checkpoint (no format {CHECKPOINT_FORMAT!r})"
        )
    return obj


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(model with the checkpoint's weights, checkpoint dict without the state dict).

    A ``PretrainNet`` checkpoint (its weights live under ``backbone.``; ``model_kwargs`` carry
    head_depth / head_dim) comes back as a ``PretrainNet``, a plain timm one as the timm model."""
    obj = read_checkpoint(path)
    wrapped = any(k.startswith("backbone.") for k in obj["state_dict"])
    model = (build_network if wrapped else create_model)(
        obj["arch"],
        obj["num_classes"],
        obj["in_chans"],
        obj["img_size"],
        **obj.get("model_kwargs", {}),
    )
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise HarnessError(
            f"checkpoint {path}: weights do not fit {obj['arch']} ({str(e).splitlines()[0]})"
        ) from None
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    return model, info


# ---------------------------------------------------------------------------------------------
# Layers


@dataclass(frozen=True)
class Layer:
    """One measurable layer. ``stage`` is the timm ``feature_info`` module it belongs to: a
    ResNet stage (``layer3``) for its residual blocks (``layer3.0``, ``layer3.1``), else the
    layer itself (the stem ``act1``, a ViT block, ``pre_logits``)."""

    name: str
    index: int  # position among all layers of the model
    depth_frac: float  # (index + 1) / number of layers
    kind: str  # "feature" (a block or the stem) or "pre_logits"
    stage: str = ""


PRE_LOGITS = "pre_logits"


def _root(model: nn.Module) -> nn.Module:
    """The timm model whose ``feature_info`` names the layers (a PretrainNet's backbone)."""
    return model.backbone if isinstance(model, PretrainNet) else model


def model_layers(model: nn.Module) -> list[Layer]:
    """Every measurable layer at block granularity: each timm ``feature_info`` entry, with a
    stage that is a sequence of blocks (a ResNet ``layerN``) listed block by block
    (``layerN.0``, ``layerN.1``, ...), then the pre-logits representation the classifier reads.
    A stage's output is its last block's, so nothing measurable is lost by the split."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise HarnessError(
            f"{type(model).__name__} has no timm feature_info; cannot list its layers"
        )
    root = _root(model)
    named: list[tuple[str, str]] = []
    for f in info:
        mod = root.get_submodule(f["module"])
        if isinstance(mod, nn.Sequential) and len(mod) > 0:
            named += [(f"{f['module']}.{i}", f["module"]) for i in range(len(mod))]
        else:
            named.append((f["module"], f["module"]))
    named.append((PRE_LOGITS, PRE_LOGITS))
    n = len(named)
    return [
        Layer(nm, i, (i + 1) / n, "pre_logits" if nm == PRE_LOGITS else "feature", stage)
        for i, (nm, stage) in enumerate(named)
    ]


def select_layers(model: nn.Module, spec: str | Sequence[str | int] = "all") -> list[Layer]:
    """Layers by 'all', or names / indices (negative from the end), comma separated or a list.
    A whole stage's name (``layer3``) selects its last block, whose output is the stage's."""
    layers = model_layers(model)
    if isinstance(spec, str):
        if spec.strip() == "all":
            return layers
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    by_name = {ly.name: ly for ly in layers}
    by_name.update({ly.stage: ly for ly in layers if ly.stage not in by_name})  # last block wins
    out: list[Layer] = []
    for item in spec:
        s = str(item)
        if s in by_name:
            ly = by_name[s]
        elif s.lstrip("-").isdigit() and -len(layers) <= int(s) < len(layers):
            ly = layers[int(s)]
        else:
            valid = ", ".join(f"{ly.index}:{ly.name}" for ly in layers)
            raise HarnessError(
                f"unknown layer {s!r} of {type(model).__name__}; valid: all, {valid}"
            )
        if ly not in out:
            out.append(ly)
    return sorted(out, key=lambda ly: ly.index)


def default_pool(model: nn.Module) -> str:
    """The pooling the model's own classifier uses, so NC sees what the classifier sees: ``cls``
    for a ViT that classifies from its CLS token (timm ``global_pool='token'``), else ``avg``
    (CNN maps averaged; ViT patch tokens averaged, prefix tokens excluded)."""
    return "cls" if getattr(_root(model), "global_pool", None) == "token" else "avg"


def resolve_pool(model: nn.Module, pool: str | None) -> str:
    """``pool``, with None / ``auto`` replaced by the model's own (``default_pool``)."""
    if pool is None or pool == AUTO_POOL:
        return default_pool(model)
    if pool not in POOLS:
        raise HarnessError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")
    return pool


def pool_features(t: Any, pool: str, n_prefix: int = 0) -> torch.Tensor:
    """B×C×H×W maps → B×C (average); ViT tokens → CLS (first prefix token) or the mean of the
    patch tokens (prefix tokens excluded, as timm's own avg pool)."""
    if isinstance(t, tuple):  # forward_intermediates(return_prefix_tokens=True): (patches, prefix)
        spatial, prefix = t
        if pool == "cls" and prefix is not None and prefix.shape[1] > 0:
            return prefix[:, 0]
        t = spatial
    elif t.ndim == 3 and n_prefix:  # B×L×C tokens from a hook, prefix tokens first
        if pool == "cls":
            return t[:, 0]
        t = t[:, n_prefix:]
    if t.ndim == 4:
        return t.mean((2, 3))
    if t.ndim == 3:
        return t.mean(1)
    return t.flatten(1)


class LayerFeatures:
    """One forward pass → pooled features of every selected layer (and the logits).

    Uses timm's ``forward_intermediates`` when every selected layer is a ``feature_info`` entry
    (ViT blocks); otherwise (ResNet residual blocks, models without it) forward hooks on the
    layers' dotted module names, removed again when the call ends. ``pool`` None or ``auto``:
    the model's own pooling (``default_pool``).
    """

    def __init__(self, model: nn.Module, layers: Sequence[Layer], pool: str | None = None):
        self.model = model
        self.layers = list(layers)
        self.pool = resolve_pool(model, pool)
        feats = [ly for ly in self.layers if ly.kind == "feature"]
        fi_names = [f["module"] for f in getattr(model, "feature_info", None) or []]
        fi = getattr(model, "forward_intermediates", None)
        self.use_fi = fi is not None and all(ly.name in fi_names for ly in feats)
        self.indices = [fi_names.index(ly.name) for ly in feats] if self.use_fi else []
        self.prefix = (
            self.use_fi
            and "return_prefix_tokens" in inspect.signature(fi).parameters
            and getattr(model, "num_prefix_tokens", 0) > 0
        )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({layer name: B×D features}, logits)."""
        m = self.model
        out: dict[str, torch.Tensor] = {}
        if self.use_fi:
            kw = {"return_prefix_tokens": True} if self.prefix else {}
            final, inter = m.forward_intermediates(x, indices=self.indices or [0], **kw)
            if self.indices:
                for ly, t in zip(
                    [ly for ly in self.layers if ly.kind == "feature"], inter, strict=True
                ):
                    out[ly.name] = pool_features(t, self.pool)
        else:
            final, caught = self._hooked(x)
            for ly in self.layers:
                if ly.kind == "feature":
                    out[ly.name] = pool_features(
                        caught[ly.name], self.pool, getattr(m, "num_prefix_tokens", 0)
                    )
        pre = m.forward_head(final, pre_logits=True)
        logits = m.head_logits(pre) if isinstance(m, PretrainNet) else m.get_classifier()(pre)
        if any(ly.kind == "pre_logits" for ly in self.layers):
            out[PRE_LOGITS] = pre.flatten(1)
        return out, logits

    def _hooked(self, x):
        caught: dict[str, torch.Tensor] = {}
        root = _root(self.model)
        handles = []
        try:
            for ly in self.layers:
                if ly.kind == "feature":
                    handles.append(
                        root.get_submodule(ly.name).register_forward_hook(
                            lambda _m, _i, o, name=ly.name: caught.__setitem__(name, o)
                        )
                    )
            final = self.model.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        return final, caught


def classifier_weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W, b) of a linear classifier reading the pre-logits features directly, else None (a
    projection head between them, or a head that is not a single Linear)."""
    if isinstance(model, PretrainNet) and model.head_depth > 0:
        return None
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        return head.weight.detach(), (head.bias.detach() if head.bias is not None else None)
    return None
