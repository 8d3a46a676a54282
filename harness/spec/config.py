"""Typed, validated specs: YAML in, pydantic objects out, with ``key.path=value`` overrides.

Every problem with a spec (missing file, YAML syntax, unknown key, bad value, bad override)
surfaces as ONE ``HarnessError`` line that says where (file and dotted key path), what is wrong
and what would be valid, e.g. ``spec.yaml: base.loss: unknown loss 'foo'; valid: ce, mse``; a
spec with several problems lists them all on that line (``harness.spec.problems``), and a spec of
another kind (a sweep spec given to ``harness submit``) names the command that reads it.

Registries (model presets, datasets, losses, timm) are imported lazily inside the validators so
that importing this module stays cheap and timm is only loaded for a non-preset architecture.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harness.spec import bounds, registry
from harness.spec.identity import run_id
from harness.spec.problems import Loc, Problem, SpecError, check, dotted, harness_error, problems_of
from harness.spec.registry import AUTO_EXECUTOR
from harness.spec.trial import setting_problem, trial_fields


def _choices(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def dataset_problem(name: object) -> str | None:
    """Why ``name`` is not a dataset a spec may name (a registered name, or
    ``<name>:<path>`` for a source that takes a path), else None."""
    base, sep, path = name.partition(":") if isinstance(name, str) else ("", "", "")
    if base in registry.DATASETS and (
        not sep or (path and registry.DATASETS.meta(base).takes_path)
    ):
        return None
    return registry.DATASETS.unknown(name)


def one_of(reg: registry.Registry[Any]) -> Callable[[str], str]:
    """A field validator: the value is a name of ``reg`` (else the registry's one line)."""

    def check(v: str) -> str:
        return reg.checked(v)

    return check


def known_executor(v: str) -> str:
    """An executor name or ``auto`` (a field validator of the specs that choose one)."""
    if v != AUTO_EXECUTOR and v not in registry.EXECUTORS:
        raise ValueError(f"{registry.EXECUTORS.unknown(v)}, or {AUTO_EXECUTOR}")
    return v


def _is_timm_model(name: str) -> bool:
    """Whether timm knows architecture ``name``: the one place the spec layer reads timm (its
    model list), imported here (seconds) only for a name that is not a preset."""
    import timm

    return bool(timm.is_model(name))


# --------------------------------------------------------------------------------------------
# Models


class SpecModel(BaseModel):
    """Common base: unknown keys are errors, every numeric field (and loss or dataset option)
    lies in its range in ``harness.spec.bounds``, and ``from_dict`` gives one-line errors that list
    every problem.

    A model whose whole-spec checks (``mode="after"`` validators) read only the fields in
    ``_CHECKS_READ`` has them run even when another field is wrong: the spec is validated a
    second time without the wrong fields (at their defaults), so a bad ``resources.nodes`` does
    not hide a typo'd dataset in ``base``. A wrong field they read, or a wrong required one,
    leaves them unrun (their verdict would be about a value the user did not write)."""

    model_config = ConfigDict(extra="forbid")
    _CHECKS_READ: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*")
    @classmethod
    def _in_range(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None:
            check(bounds.problems(info.field_name or "", v))
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """Every problem of ``data`` as one ``SpecError``, the whole-spec checks' included
        where they can run (see the class docstring)."""
        try:
            return handler(data)
        except ValidationError as e:
            problems = problems_of(e, cls)
        wrong = {loc[0] for loc, _ in problems if loc}
        read = cls._CHECKS_READ
        if read and isinstance(data, Mapping) and wrong & set(data) and not wrong & read:
            try:  # not ``handler``: a subclass's ``after`` validators run outside this one
                cls.model_validate({k: v for k, v in data.items() if k not in wrong})
            except ValidationError as e:
                problems += [p for p in problems_of(e, cls) if p[0] and p[0][0] not in wrong]
        raise SpecError(problems)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config") -> Self:
        """Validate ``d``; any problem is raised as one HarnessError line prefixed by ``where``
        (a file name, or a word saying where the dict came from)."""
        try:
            return cls.model_validate(d)
        except ValidationError as e:
            raise harness_error(where, e, cls) from None


# PretrainConfig fields added after run ids were first handed out, with their defaults
_LATER_FIELDS: dict[str, Any] = {"optimizer": "sgd"}


class PretrainConfig(SpecModel):
    """One pre-training run. Its canonical JSON (all fields, defaults included) is hashed into
    ``run_id``, so any field change makes a new run and equal configs share results."""

    arch: str
    dataset: str
    data_root: str | None = None
    data_kwargs: dict[str, JsonValue] = {}
    loss: str = "ce"
    loss_kwargs: dict[str, float] = {}
    augment: str = "none"
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
        if v in registry.ARCHS:
            return v
        if not _is_timm_model(v):
            raise ValueError(registry.ARCHS.unknown(v))
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        if (bad := dataset_problem(v)) is not None:
            raise ValueError(bad)
        return v

    _known_augment = field_validator("augment")(one_of(registry.AUGMENTATIONS))
    _known_loss = field_validator("loss")(one_of(registry.LOSSES))

    @field_validator("loss_kwargs")
    @classmethod
    def _known_loss_kwargs(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        """Option names must be ones the chosen loss accepts (a typo would otherwise only fail
        when the job builds the loss, long after submission); unchecked when the loss itself is
        wrong."""
        loss = info.data.get("loss")
        accepted = registry.LOSSES.meta(loss).options if loss in registry.LOSSES else None
        unknown = [k for k in v if accepted is not None and k not in accepted]
        valid = f"valid: {_choices(accepted or ())}" if accepted else "it takes no options"
        check(((k,), f"loss {loss!r} has no option {k!r}; {valid}") for k in unknown)
        return v

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
        return run_id(self.identity())

    def short_name(self) -> str:
        """Readable (not unique) label, e.g. ``resnet_tiny-ce-none-h0-e5-s0``."""
        return (
            f"{self.arch}-{self.loss}-{self.augment}-h{self.head_depth}-e{self.epochs}-s{self.seed}"
        )


class Resources(SpecModel):
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


class SubmitSpec(SpecModel):
    """A ``harness submit`` file: ``base`` PretrainConfig fields, crossed with ``grid`` (each key
    a field, each value a non-empty list), plus one run per ``include`` entry (merged over base).
    All runs are validated when the spec is, so a bad value fails at load time, not on a node."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    executor: str = AUTO_EXECUTOR
    resources: Resources = Resources()
    base: dict[str, JsonValue] = {}
    grid: dict[str, JsonValue] = {}
    include: list[dict[str, JsonValue]] = []
    _CHECKS_READ = frozenset({"base", "grid", "include"})
    _known_executor = field_validator("executor")(known_executor)

    @model_validator(mode="after")
    def _valid_runs(self) -> Self:
        self.runs()
        return self

    def _grid_axes(self) -> list[list[Any]]:
        """The grid's value lists in key order; each key that is not a field, or whose value is
        not a non-empty list, is a problem at ``grid.<key>``."""
        fields = PretrainConfig.model_fields
        problems: list[Problem] = []
        for key, values in self.grid.items():
            if key not in fields:
                problems.append((("grid", key), f"not a run field; valid: {', '.join(fields)}"))
            elif not isinstance(values, list) or not values:
                problems.append((("grid", key), f"must be a non-empty list (got {values!r})"))
        check(problems)
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
        ``include`` runs; each validated (the problems of every run reported together, each
        at the key it came from), duplicates (same run_id) dropped keeping the first."""
        out: dict[str, PretrainConfig] = {}
        problems: list[Problem] = []
        for values, origins in self._variants():
            try:
                cfg = PretrainConfig.model_validate({**self.base, **values})
            except ValidationError as e:
                for loc, message in problems_of(e, PretrainConfig):
                    where = origins.get(loc[0], ("base", loc[0])) if loc else ("base",)
                    problems.append((where + loc[1:], message))
                continue
            out.setdefault(cfg.run_id(), cfg)
        check(problems)
        return list(out.values())


# --------------------------------------------------------------------------------------------
# Fine-tuning sweeps


class CheckpointSelect(SpecModel):
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


class SweepSpec(SpecModel):
    """A ``harness sweep`` file: checkpoints × the ``grid`` of trial fields (each a list), over
    ``base``. With ``search: random``, a grid value may instead be a distribution
    ``{loguniform: [lo, hi]}`` / ``{uniform: [lo, hi]}`` / ``{choice: [...]}``: ``num_samples``
    draws per grid point, seeded by ``search_seed`` so a re-run proposes the same trials."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    checkpoints: CheckpointSelect
    base: dict[str, JsonValue] = {}
    grid: dict[str, JsonValue] = {}
    # extra trial points over base, not crossed with the grid
    include: list[dict[str, JsonValue]] = []
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
    _CHECKS_READ = frozenset({"base", "grid", "include", "search", "num_samples", "search_seed"})

    @model_validator(mode="after")
    def _valid_grid(self) -> Self:
        """Every problem of the trial fields at once: the grid's shape, names that are not trial
        fields, values out of range, and (when the grid is well formed, so its points can be
        drawn) each point's method and dataset."""
        shape = list(self._grid_problems())
        malformed = {loc[1] for loc, _ in shape}
        check(
            [
                *shape,
                *self._field_problems(),
                *self._value_problems(skip=malformed),
                *([] if shape else self._point_problems()),
            ]
        )
        return self

    def _grid_problems(self) -> Iterator[Problem]:
        """A grid value that is neither a non-empty list nor (with ``search: random``) one
        distribution of a known kind with valid arguments."""
        for key, values in self.grid.items():
            if isinstance(values, dict):
                if self.search != "random":
                    yield ("grid", key), "a distribution needs search: random"
                elif len(values) != 1 or next(iter(values)) not in DISTRIBUTIONS:
                    yield ("grid", key), f"distribution must be one of {', '.join(DISTRIBUTIONS)}"
                else:
                    ((kind, arg),) = values.items()
                    if (bad := bounds.distribution_problem(key, kind, arg)) is not None:
                        yield ("grid", key, kind), bad
            elif not isinstance(values, list) or not values:
                yield ("grid", key), f"must be a non-empty list (got {values!r})"

    def _field_problems(self) -> Iterator[Problem]:
        """A key of base, the grid or an include entry that is not a trial field."""
        names = trial_fields()
        keys: list[Loc] = [("base", k) for k in self.base] + [("grid", k) for k in self.grid]
        keys += [("include", n, k) for n, extra in enumerate(self.include) for k in extra]
        for at in keys:
            if at[-1] not in names:
                yield at, f"not a trial field; valid: {_choices(names)}"

    def _value_problems(self, skip: set[str | int]) -> Iterator[Problem]:
        """Every value a trial can take (in base, a grid list or distribution, an include entry)
        passes the trial's own setting checks, so every point does; grid keys in ``skip`` (not
        well formed) are left out."""
        found: list[tuple[Loc, str, Any]] = [(("base", k), k, v) for k, v in self.base.items()]
        for key, values in self.grid.items():
            if key in skip:
                continue
            at: Loc = ("grid", key)
            if isinstance(values, dict):  # a distribution: its arguments
                ((kind, values),) = values.items()
                at += (kind,)
            found += [((*at, i), key, v) for i, v in enumerate(values)]
        for n, extra in enumerate(self.include):
            found += [(("include", n, k), k, v) for k, v in extra.items()]
        for where, key, value in found:
            if (bad := setting_problem(key, value)) is not None:
                yield where + bad[0], bad[1]

    def _point_problems(self) -> Iterator[Problem]:
        """Every trial names a known method and dataset (the model-dependent checks, layers
        and budgets, run when the checkpoints are known)."""
        for point in self.points():
            for key in ("dataset", "method"):
                if key not in point:
                    yield ("base", key), "required (in base, grid or include)"
            method, ds = point.get("method"), point.get("dataset")
            if "method" in point and (bad := registry.METHODS.problem(method)) is not None:
                yield self._origin("method", method), bad
            if "dataset" in point and (bad := dataset_problem(ds)) is not None:
                yield self._origin("dataset", ds), bad

    def key_path(self, key: str, value: Any) -> str:
        """Where in the spec trial field ``key`` takes ``value``, e.g. ``grid.layer`` or
        ``include[2].layer``: the place to name in a message about that value."""
        return dotted(self._origin(key, value))

    def _origin(self, key: str, value: Any) -> Loc:
        """Where in the spec trial field ``key`` takes ``value``: its grid entry (a list holding
        it, or a distribution), else the first include entry setting it, else ``base``."""
        values = self.grid.get(key)
        if isinstance(values, dict) or (isinstance(values, list) and value in values):
            return ("grid", key)
        n = next(
            (n for n, extra in enumerate(self.include) if key in extra and extra[key] == value),
            None,
        )
        return ("base", key) if n is None else ("include", n, key)

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
