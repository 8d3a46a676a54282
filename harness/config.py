"""Typed, validated specs: YAML in, pydantic objects out, with ``key.path=value`` overrides.

Every problem with a spec (missing file, YAML syntax, unknown key, bad value, bad override)
surfaces as ONE ``HarnessError`` line that says where (file and dotted key path), what is wrong
and what would be valid, e.g. ``spec.yaml: base.loss: unknown loss 'foo'; valid: ce, mse``.

Registries (model presets, datasets, losses, timm) are imported lazily inside the validators so
that importing this module stays cheap and timm is only loaded for a non-preset architecture.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Self, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from harness import bounds
from harness.errors import HarnessError

Loc = tuple[str | int, ...]


# --------------------------------------------------------------------------------------------
# Error conversion: pydantic errors -> one line


class _SpecError(ValueError):
    """A validation problem found below a field (e.g. inside ``grid``): carries its own key path,
    which pydantic would otherwise lose, and how many further problems were left unreported."""

    def __init__(self, loc: Loc, message: str, more: int = 0) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.more = more


def _dotted(loc: Loc) -> str:
    """``('include', 0, 'loss')`` -> ``include[0].loss``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(model: type[BaseModel] | None, loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class found by walking ``loc`` down from ``model`` (None if the path
    leaves the models, e.g. into a plain dict)."""
    for part in loc:
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        if field is None:
            return None
        model = _find_model(field.annotation)
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    """The model class in ``annotation`` (itself, or inside ``X | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        return next(filter(None, map(_find_model, get_args(annotation))), None)
    return None


def _describe(err: ErrorDetails, model: type[BaseModel]) -> tuple[Loc, str, int]:
    """``(key path, message, extra problems)`` for one pydantic error, with the valid choices
    spelled out where pydantic leaves them implicit (unknown keys) and the offending input."""
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    inner = err.get("ctx", {}).get("error")
    if kind == "value_error" and isinstance(inner, _SpecError):
        return loc + inner.loc, inner.message, inner.more
    if kind in ("value_error", "assertion_error") and inner is not None:
        return loc, str(inner), 0  # our own validators' messages already name value and choices
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        valid = f"; valid keys: {', '.join(owner.model_fields)}" if owner else ""
        return loc, f"unknown key{valid}", 0
    if kind == "missing":
        return loc, "required key is missing", 0
    value = err.get("input")
    shown = "" if isinstance(value, Mapping) else f" (got {value!r})"
    return loc, f"{err['msg']}{shown}", 0


def _one_line(where: str, loc: Loc, message: str, more: int = 0) -> str:
    """``where: dotted.path: message (+N more)`` with any newline flattened."""
    parts = [where, _dotted(loc), message]
    line = ": ".join(p for p in parts if p) + (f" (+{more} more)" if more else "")
    return " ".join(line.splitlines())


def _harness_error(where: str, exc: ValidationError, model: type[BaseModel]) -> HarnessError:
    """The first problem of ``exc`` as one HarnessError line; the rest are counted."""
    errors = exc.errors()
    loc, message, more = _describe(errors[0], model)
    return HarnessError(_one_line(where, loc, message, more + len(errors) - 1), code=2)


def _choices(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


# --------------------------------------------------------------------------------------------
# Models


class _Spec(BaseModel):
    """Common base: unknown keys are errors, every numeric field (and loss or dataset option)
    lies in its range in ``harness.bounds``, and ``from_dict`` gives one-line errors."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _in_range(cls, v: Any, info: ValidationInfo) -> Any:
        bad = None if v is None else bounds.problem(info.field_name or "", v)
        if bad is not None:
            raise _SpecError(*bad)
        return v

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config") -> Self:
        """Validate ``d``; any problem is raised as one HarnessError line prefixed by ``where``
        (a file name, or a word saying where the dict came from)."""
        try:
            return cls.model_validate(d)
        except ValidationError as e:
            raise _harness_error(where, e, cls) from None


# PretrainConfig fields added after run ids were first handed out, with their defaults
_LATER_FIELDS: dict[str, Any] = {"optimizer": "sgd"}


class PretrainConfig(_Spec):
    """One pre-training run. Its canonical JSON (all fields, defaults included) is hashed into
    ``run_id``, so any field change makes a new run and equal configs share results."""

    arch: str
    dataset: str
    data_root: str | None = None
    data_kwargs: dict[str, Any] = {}
    loss: str = "ce"
    loss_kwargs: dict[str, float] = {}
    augment: Literal["none", "weak", "strong"] = "none"
    head_depth: int = 0
    head_dim: int = 128
    epochs: int = 5
    batch_size: int = 128  # global batch, across all ranks
    lr: float = 0.05
    optimizer: Literal["sgd", "adamw"] = "sgd"  # adamw ignores momentum (ViTs train with it)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    per_class: int | None = None
    limit: int | None = None
    nc_layers: str = "all"
    nc_split: Literal["train", "val", "test"] = "train"
    nc_limit: int | None = 5000

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from harness.catalog import PRESET_ARCHS

        if v in PRESET_ARCHS:
            return v
        import timm  # slow (~seconds): only for names that are not presets

        if not timm.is_model(v):
            raise ValueError(
                f"unknown arch {v!r}; valid: {_choices(PRESET_ARCHS)}, or any timm model name"
            )
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from harness.data import names

        if v not in names() and not v.startswith("imagefolder:"):
            raise ValueError(
                f"unknown dataset {v!r}; valid: {_choices(names())}, or imagefolder:<path>"
            )
        return v

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        from harness.catalog import LOSS_OPTIONS

        if v not in LOSS_OPTIONS:
            raise ValueError(f"unknown loss {v!r}; valid: {_choices(LOSS_OPTIONS)}")
        return v

    @model_validator(mode="after")
    def _known_loss_kwargs(self) -> Self:
        """Option names must be ones the chosen loss accepts (a typo would otherwise only fail
        when the job builds the loss, long after submission)."""
        from harness.catalog import LOSS_OPTIONS

        accepted = LOSS_OPTIONS.get(self.loss)
        unknown = [k for k in self.loss_kwargs if accepted is not None and k not in accepted]
        if unknown:
            valid = f"valid: {_choices(accepted)}" if accepted else "it takes no options"
            raise _SpecError(
                ("loss_kwargs", unknown[0]),
                f"loss {self.loss!r} has no option {unknown[0]!r}; {valid}",
            )
        return self

    def identity(self) -> dict[str, Any]:
        """The config as hashed into ``run_id`` and recorded by the job: every field, except
        that fields added after the first release are left out while at their default, so
        earlier run ids stay valid."""
        dump = self.model_dump(mode="json")
        for name, default in _LATER_FIELDS.items():
            if dump.get(name) == default:
                dump.pop(name)
        return dump

    def run_id(self) -> str:
        """Content hash of ``identity()`` (stable across key order)."""
        from harness.store import run_id

        return run_id(self.identity())

    def short_name(self) -> str:
        """Readable (not unique) label, e.g. ``resnet_tiny-ce-none-h0-e5-s0``."""
        return (
            f"{self.arch}-{self.loss}-{self.augment}-h{self.head_depth}-e{self.epochs}-s{self.seed}"
        )


class Resources(_Spec):
    """What each job of a submission asks the scheduler for."""

    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    partition: str | None = None
    signal_delay_s: int = 90
    max_num_timeout: int = 3
    requeue: bool = True
    array_parallelism: int = 16
    # retries of a run whose process or node died (signal, OOM kill, node failure); a
    # deterministic failure (exception, NaN loss, invalid config) is recorded once
    max_retries: int = 2


class SubmitSpec(_Spec):
    """A ``harness submit`` file: ``base`` PretrainConfig fields, crossed with ``grid`` (each key
    a field, each value a non-empty list), plus one run per ``include`` entry (merged over base).
    All runs are validated when the spec is, so a bad value fails at load time, not on a node."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    executor: Literal["auto", "slurm", "local", "debug"] = "auto"
    resources: Resources = Resources()
    base: dict[str, Any] = {}
    grid: dict[str, Any] = {}
    include: list[dict[str, Any]] = []

    @model_validator(mode="after")
    def _valid_runs(self) -> Self:
        self.runs()
        return self

    def _grid_axes(self) -> list[list[Any]]:
        """The grid's value lists in key order; a key that is not a field, or a value that is
        not a non-empty list, is an error at ``grid.<key>``."""
        fields = PretrainConfig.model_fields
        for key, values in self.grid.items():
            if key not in fields:
                raise _SpecError(("grid", key), f"not a run field; valid: {', '.join(fields)}")
            if not isinstance(values, list) or not values:
                raise _SpecError(("grid", key), f"must be a non-empty list (got {values!r})")
        return list(self.grid.values())

    def _variants(self) -> Iterable[tuple[dict[str, Any], dict[str, Loc]]]:
        """Each run's overrides of ``base`` and, per key, where in the spec it came from."""
        keys = list(self.grid)
        axes = self._grid_axes()
        for idx in itertools.product(*(range(len(a)) for a in axes)):
            yield (
                {k: axes[a][i] for a, (k, i) in enumerate(zip(keys, idx, strict=True))},
                {k: ("grid", k, i) for k, i in zip(keys, idx, strict=True)},
            )
        for n, extra in enumerate(self.include):
            yield extra, {k: ("include", n, k) for k in extra}

    def runs(self) -> list[PretrainConfig]:
        """Grid product over ``base`` (keys in spec order, values in list order), then the
        ``include`` runs; each validated, duplicates (same run_id) dropped keeping the first."""
        out: dict[str, PretrainConfig] = {}
        for values, origins in self._variants():
            try:
                cfg = PretrainConfig.model_validate({**self.base, **values})
            except ValidationError as e:
                loc, message, more = _describe(e.errors()[0], PretrainConfig)
                where = origins.get(loc[0], ("base", loc[0])) if loc else ("base",)
                raise _SpecError(where + loc[1:], message, more + e.error_count() - 1) from None
            out.setdefault(cfg.run_id(), cfg)
        return list(out.values())


# --------------------------------------------------------------------------------------------
# Loading


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (an empty file is ``{}``); a missing file,
    a syntax error (with line and column) or a non-mapping top level is one HarnessError line."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such file", code=2) from None
    except OSError as e:
        raise HarnessError(f"{path}: cannot read: {e.strerror or e}", code=2) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise HarnessError(f"{path}: {_yaml_problem(e)}", code=2) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HarnessError(
            f"{path}: top level must be a mapping of keys (got a {type(data).__name__})", code=2
        )
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One-line description of a YAML error, with 1-based line and column when known."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return " ".join(f"YAML syntax error at {at}{problem}".split())


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], where: str) -> dict[str, Any]:
    """A copy of ``data`` with each ``key.path=value`` applied in order; the value is parsed by
    ``yaml.safe_load`` (so ``3``, ``[ce, mse]`` and ``null`` mean what they do in the file).
    Missing intermediate keys are created; walking into a non-mapping is an error."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise HarnessError(f"{where}: override {item!r}: expected key.path=value", code=2)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise HarnessError(f"{where}: override {item!r}: {_yaml_problem(e)}", code=2) from None
        node = out
        for depth, part in enumerate(path[:-1]):
            if node.get(part) is None:  # absent, or an empty section (``resources:``)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                walked = ".".join(path[: depth + 1])
                raise HarnessError(
                    f"{where}: override {item!r}: {walked} is not a mapping (it is {node!r})",
                    code=2,
                )
        node[path[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    """Copy nested dicts/lists (plain YAML data) so overrides never touch the caller's."""
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def load_spec(
    path: str | os.PathLike[str], overrides: Sequence[str] = (), kind: type[_Spec] | None = None
) -> Any:
    """Read a spec (a ``SubmitSpec`` unless ``kind`` says otherwise), apply ``overrides`` and
    validate it (all runs included)."""
    where = str(path)
    model = kind or SubmitSpec
    return model.from_dict(apply_overrides(load_yaml(path), overrides, where), where)


# --------------------------------------------------------------------------------------------
# Fine-tuning sweeps


class CheckpointSelect(_Spec):
    """Which pre-trained checkpoints a sweep fine-tunes: a SQL query over the store returning a
    ``checkpoint`` column (e.g. ``SELECT checkpoint FROM pretrain WHERE arch = 'vit_tiny'``),
    and/or explicit paths."""

    query: str | None = None
    paths: list[str] = []

    @model_validator(mode="after")
    def _some(self) -> Self:
        if not self.query and not self.paths:
            raise ValueError("give a query over the store or a list of paths")
        return self


DISTRIBUTIONS = ("loguniform", "uniform", "choice")


class SweepSpec(_Spec):
    """A ``harness sweep`` file: checkpoints × the ``grid`` of trial fields (each a list), over
    ``base``. With ``search: random``, a grid value may instead be a distribution
    ``{loguniform: [lo, hi]}`` / ``{uniform: [lo, hi]}`` / ``{choice: [...]}``: ``num_samples``
    draws per grid point, seeded by ``search_seed`` so a re-run proposes the same trials."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    checkpoints: CheckpointSelect
    base: dict[str, Any] = {}
    grid: dict[str, Any] = {}
    include: list[dict[str, Any]] = []  # extra trial points over base, not crossed with the grid
    search: Literal["grid", "random"] = "grid"
    num_samples: int = 1
    search_seed: int = 0
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int = 1
    reduction_factor: int = 2
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    # retries of a trial whose process or node died (signal, OOM kill, node failure, lost Ray
    # worker); a deterministic failure (exception, NaN loss, invalid config) is recorded once
    max_retries: int = 2

    @model_validator(mode="after")
    def _valid_grid(self) -> Self:
        for key, values in self.grid.items():
            if isinstance(values, dict):
                if self.search != "random":
                    raise _SpecError(("grid", key), "a distribution needs search: random")
                if len(values) != 1 or next(iter(values)) not in DISTRIBUTIONS:
                    raise _SpecError(
                        ("grid", key), f"distribution must be one of {', '.join(DISTRIBUTIONS)}"
                    )
                ((kind, arg),) = values.items()
                if (bad := bounds.distribution_problem(key, kind, arg)) is not None:
                    raise _SpecError(("grid", key, kind), bad)
            elif not isinstance(values, list) or not values:
                raise _SpecError(("grid", key), f"must be a non-empty list (got {values!r})")
        self._check_points()
        self._check_values()
        return self

    def _check_values(self) -> None:
        """Every value a trial can take (in base, a grid list or distribution, an include entry)
        passes the trial's own setting checks, so every point does."""
        from harness.finetune.trial import setting_problem

        found: list[tuple[Loc, str, Any]] = [(("base", k), k, v) for k, v in self.base.items()]
        for key, values in self.grid.items():
            at: Loc = ("grid", key)
            if isinstance(values, dict):  # a distribution: its arguments
                ((kind, values),) = values.items()
                at += (kind,)
            found += [((*at, i), key, v) for i, v in enumerate(values)]
        for n, extra in enumerate(self.include):
            found += [(("include", n, k), k, v) for k, v in extra.items()]
        for where, key, value in found:
            if (bad := setting_problem(key, value)) is not None:
                raise _SpecError(where + bad[0], bad[1])

    def _check_points(self) -> None:
        """Every trial names a known method and dataset and only trial fields (the model-
        dependent checks, layers and budgets, run when the checkpoints are known)."""
        from dataclasses import fields as dc_fields

        from harness import data, finetune

        names = {f.name for f in dc_fields(finetune.TrialConfig)} - {"checkpoint"}
        for key in [*self.base, *self.grid, *(k for extra in self.include for k in extra)]:
            if key not in names:
                raise _SpecError(
                    ("grid", key) if key in self.grid else ("base", key),
                    f"not a trial field; valid: {_choices(names)}",
                )
        for point in self.points():
            for key in ("dataset", "method"):
                if key not in point:
                    raise _SpecError(("base", key), "required (in base, grid or include)")
            where = ("grid", "method") if "method" in self.grid else ("base", "method")
            if point["method"] not in finetune.METHODS:
                raise _SpecError(
                    where,
                    f"unknown method {point['method']!r}; valid: {_choices(finetune.METHODS)}",
                )
            ds = point["dataset"]
            if ds not in data.names() and not str(ds).startswith("imagefolder:"):
                where = ("grid", "dataset") if "dataset" in self.grid else ("base", "dataset")
                raise _SpecError(where, f"unknown dataset {ds!r}; valid: {_choices(data.names())}")

    def points(self) -> list[dict[str, Any]]:
        """Trial field dicts (without the checkpoint): grid product, random draws for
        distributions; deterministic."""
        import random

        rng = random.Random(self.search_seed)
        lists = {k: v for k, v in self.grid.items() if isinstance(v, list)}
        dists = {k: v for k, v in self.grid.items() if isinstance(v, dict)}
        out = []
        for combo in itertools.product(*lists.values()):
            for _ in range(self.num_samples if dists else 1):
                point = {**self.base, **dict(zip(lists, combo, strict=True))}
                for k, d in dists.items():
                    ((kind, arg),) = d.items()
                    if kind == "loguniform":
                        point[k] = float(math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))))
                    elif kind == "uniform":
                        point[k] = rng.uniform(arg[0], arg[1])
                    else:
                        point[k] = rng.choice(arg)
                out.append(point)
        return out + [{**self.base, **extra} for extra in self.include]
