"""One fine-tuning trial's settings (``TrialConfig``), torch-free: what a sweep spec's ``base``,
``grid`` and ``include`` may set, checked against the registry and the field ranges before any
model or data is touched. Running a trial is ``harness.finetune.run_trial``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field, fields
from typing import get_args, get_type_hints

from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from harness.errors import HarnessError
from harness.spec import bounds, registry

AUTO_POOL = "auto"  # pool block-L tokens as the model's own classifier does
POOLS = (AUTO_POOL, "avg", "mean", "cls")
# Validation follows the budget: a trial with per_class = k validates on min(k, VAL_PER_CLASS)
# samples of each class, drawn (seeded by the trial's seed, stratified) from the val split; with
# per_class None on the whole val split. Few-shot model selection then sees few-shot validation
# data (as the paper's regime has), and the cap keeps larger budgets from paying for
# evaluation. A class with fewer val samples than that gives all it has.
VAL_PER_CLASS = 50


@dataclass(config=ConfigDict(extra="forbid", arbitrary_types_allowed=True))
class TrialConfig:
    """One fine-tuning trial. ``layer`` is block L (a block of the layer registry, e.g.
    ``layer3.1`` / ``blocks.7``, or a whole ResNet stage ``layer3``; in a sweep also an index
    into the layer list or ``auto``, resolved to a name before the trial runs; required for
    ``layer``/``scl``, None otherwise); ``per_class`` is the downstream training budget (None:
    all; it also sizes the validation set, see ``VAL_PER_CLASS``); ``pool`` pools block-L tokens
    of a ViT for the SCL skip (``auto``: as the model's classifier does, CLS or the patch mean;
    CNN maps are averaged)."""

    checkpoint: str
    dataset: str
    method: str
    layer: str | int | None = None
    per_class: int | None = None
    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 64
    seed: int = 0
    augment: str = "none"
    pool: str = AUTO_POOL
    data_root: str | None = None
    data_kwargs: dict[str, object] = field(default_factory=dict)
    nc: bool = True

    def check_settings(self) -> None:
        """One HarnessError line for the first setting that needs neither the model nor the
        data to be wrong: an unknown method, augmentation or pool, a value out of its range."""
        if (bad := registry.METHODS.problem(self.method)) is not None:
            raise HarnessError(bad)
        for f in fields(self):
            bad_range = setting_problem(f.name, getattr(self, f.name))
            if bad_range is not None:
                raise HarnessError(f"{'.'.join((f.name, *bad_range[0]))} {bad_range[1]}")
        if (bad := registry.AUGMENTATIONS.problem(self.augment)) is not None:
            raise HarnessError(bad)
        if self.pool not in POOLS:
            raise HarnessError(f"unknown pool {self.pool!r}; valid: {', '.join(POOLS)}")

    def val_per_class(self) -> int | None:
        """Samples per class of the validation set (None: the whole val split)."""
        return None if self.per_class is None else min(self.per_class, VAL_PER_CLASS)


def make_trial(settings: Mapping[str, object]) -> TrialConfig:
    """A ``TrialConfig`` of ``settings``; a value of the wrong type or an unknown field is one
    HarnessError line (the field, what it should be, the value given)."""
    try:
        return TrialConfig(**settings)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "trial"
        raise HarnessError(
            f"{key}: {err['msg'][0].lower()}{err['msg'][1:]} (got {err['input']!r})"
        ) from None


def trial_fields() -> tuple[str, ...]:
    """The settings a sweep spec may give a trial (every field but the checkpoint)."""
    return tuple(f.name for f in fields(TrialConfig) if f.name != "checkpoint")


# trial fields that may be None (``per_class``: the whole train split)
OPTIONAL = frozenset(n for n, t in get_type_hints(TrialConfig).items() if type(None) in get_args(t))


def setting_problem(name: str, value: object) -> tuple[tuple[str, ...], str] | None:
    """``(key path below the field, message)`` when trial field ``name`` may not be ``value``
    because of its range in ``harness.spec.bounds`` (numeric fields and dataset options), else
    None. A sweep spec checks every value of its grid with this before any trial exists."""
    if value is None and name in OPTIONAL:
        return None
    return bounds.problem(name, value)
