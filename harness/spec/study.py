"""The spec of a whole study (`harness run`): its parts, and the analyses it declares up front.

A study names its pre-training grid, downstream datasets and fine-tuning sweep (each validated as
the submit or sweep spec it becomes) and, per finding, the one primary test whose interval gives
the verdict (``PrimaryTest``). The defaults in ``DEFAULT_FINDINGS`` are the paper's claims; a
spec overrides any field of any finding. Declaring the test before the data exist is what makes
the verdict a test rather than a choice among groupings.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, JsonValue, ValidationError, ValidationInfo, field_validator

from harness.spec.config import SpecModel, SubmitSpec, SweepSpec, dataset_problem, known_executor
from harness.spec.problems import Problem, SpecError, check, problems_of
from harness.spec.registry import AUTO_EXECUTOR


class MeasureSettings(SpecModel):
    """Downstream NC per layer of every checkpoint."""

    split: Literal["train", "val", "test"] = "train"
    limit: int | None = 2000
    layers: str = "all"
    batch_size: int = 256


class ScoreSettings(SpecModel):
    limit: int | None = 2000


class ReportSettings(SpecModel):
    out: str | None = None  # default reports/<study name>
    bootstrap: int = 1000
    seed: int = 0


class PrimaryTest(SpecModel):
    """The pre-declared primary test of one finding.

    ``kind`` 'correlation': Spearman ρ of ``x`` vs ``y`` (columns of the analysis view at
    ``level``, rows selected by ``where``) within each stratum of ``strata`` (the source and
    downstream datasets are always strata: never pooled in one rank statistic), with the
    ``fixed_effects`` taken out within each stratum as ``pooling`` says, averaged over strata
    weighted by their points; the cluster bootstrap resamples ``unit``s ('run' and 'model': a
    pre-training run with all its rows; 'pair': a (checkpoint, seed) pair). The verdict says
    whether the interval excludes 0 on the side of ``expected_sign``. ``kind``
    'noninferiority': the paired difference of methods ``y`` − ``x`` (test accuracy) per
    (checkpoint, dataset, budget, seed), averaged; 'agrees' only when the interval's lower bound
    is above −``margin``, 'disagrees' when its upper bound is below −``margin``. Fewer than
    ``min_units`` independent units: no verdict ("too few runs")."""

    kind: Literal["correlation", "noninferiority"] = "correlation"
    x: str
    y: str
    level: Literal["model", "layer", "trial"] = "model"
    pooling: Literal["fixed_effect", "zscore", "raw"] = "fixed_effect"
    strata: list[str] = ["source", "dataset"]
    fixed_effects: list[str] = ["arch"]
    unit: Literal["run", "model", "pair"] = "run"
    expected_sign: Literal[-1, 1] = 1
    where: str | None = None
    margin: float = 0.02
    min_units: int = 8
    ci: float = 0.95


DEFAULT_FINDINGS: dict[str, dict[str, Any]] = {
    # 1. less source collapse (higher source NC1) transfers better (linear probe)
    "1": dict(x="source_nc1", y="acc_linear_probe", expected_sign=1, unit="run"),
    # 2a. more collapse of the fine-tuned downstream features goes with higher accuracy: one point
    # per trial, compared within a method and budget (the linear probe fine-tunes no features)
    "2a": dict(
        x="ft_nc1",
        y="acc",
        level="trial",
        expected_sign=-1,
        unit="run",
        strata=["source", "dataset", "method", "per_class"],
        where="method <> 'linear_probe'",
    ),
    # 2b. across the blocks of one model, lower downstream NC1 at block L, better SCL at L
    "2b": dict(
        x="down_nc1",
        y="acc_scl",
        level="layer",
        expected_sign=-1,
        unit="model",
        fixed_effects=["run_id"],
    ),
    # 3. SCL FT is not worse than full FT by more than the margin (paired, same seed)
    "3": dict(kind="noninferiority", x="full", y="scl", unit="pair", margin=0.02),
}


class StudySpec(SpecModel):
    """A ``harness run`` file: the pre-training grid (a submit spec's ``resources``/``base``/
    ``grid``/``include``), the downstream datasets, the fine-tuning sweep (a sweep spec's
    ``base``/``grid``/``include``/search settings; its checkpoints are the study's own runs),
    the measurement, scoring and report settings, and per finding its primary test (fields not
    given take ``DEFAULT_FINDINGS``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    executor: str = AUTO_EXECUTOR
    pretrain: dict[str, JsonValue]
    downstream: list[str] = Field(min_length=1)
    measure: MeasureSettings = MeasureSettings()
    finetune: dict[str, JsonValue]
    scores: ScoreSettings = ScoreSettings()
    report: ReportSettings = ReportSettings()
    findings: dict[str, dict[str, JsonValue]] = {}
    _known_executor = field_validator("executor")(known_executor)

    @field_validator("downstream")
    @classmethod
    def _known_downstream(cls, v: list[str]) -> list[str]:
        check(((i,), bad) for i, name in enumerate(v) if (bad := dataset_problem(name)))
        return v

    @field_validator("pretrain")
    @classmethod
    def _valid_pretrain(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        _sub_spec(
            SubmitSpec, _pretrain_dict(_name(info), info.data.get("executor", AUTO_EXECUTOR), v)
        )
        return v

    @field_validator("finetune")
    @classmethod
    def _valid_finetune(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        pretrain = info.data.get("pretrain")  # absent when it has problems of its own
        executor = info.data.get("executor", AUTO_EXECUTOR)
        ids = [] if pretrain is None else _run_ids(_pretrain_dict(_name(info), executor, pretrain))
        _sub_spec(SweepSpec, _sweep_dict(_name(info), v, ids))
        return v

    @field_validator("findings", mode="before")
    @classmethod
    def _finding_names(cls, v: Any) -> Any:
        """A finding named ``1:`` in YAML is the number 1: names are read as text (``"1"``)."""
        return {str(k): f for k, f in v.items()} if isinstance(v, dict) else v

    @field_validator("findings")
    @classmethod
    def _valid_findings(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        problems: list[Problem] = []
        for key, fields in v.items():
            if key not in DEFAULT_FINDINGS:
                problems.append(
                    ((key,), f"unknown finding; valid: {', '.join(sorted(DEFAULT_FINDINGS))}")
                )
                continue
            try:
                PrimaryTest.model_validate({**DEFAULT_FINDINGS[key], **fields})
            except ValidationError as e:
                problems += [((key, *loc), m) for loc, m in problems_of(e, PrimaryTest)]
        check(problems)
        return v

    def primary_tests(self) -> dict[str, PrimaryTest]:
        """Each finding's primary test: its defaults overridden by the spec's fields."""
        return {
            key: PrimaryTest.model_validate({**default, **self.findings.get(key, {})})
            for key, default in DEFAULT_FINDINGS.items()
        }

    def run_ids(self) -> list[str]:
        """The study's own pre-training run ids (what its findings and report read)."""
        return _run_ids(_pretrain_dict(self.name, self.executor, self.pretrain))

    def pretrain_spec(self) -> SubmitSpec:
        return SubmitSpec.model_validate(_pretrain_dict(self.name, self.executor, self.pretrain))

    def sweep_spec(self) -> SweepSpec:
        return SweepSpec.model_validate(_sweep_dict(self.name, self.finetune, self.run_ids()))


def _name(info: ValidationInfo) -> str:
    """The study's name while it is being validated (a stand-in when the name is wrong)."""
    return info.data.get("name", "study")


def _pretrain_dict(name: str, executor: str, pretrain: dict[str, Any]) -> dict[str, Any]:
    """The submit spec of a study's ``pretrain`` part."""
    return {"name": f"{name}-pretrain", "executor": executor, **pretrain}


def _sweep_dict(name: str, finetune: dict[str, Any], run_ids: list[str]) -> dict[str, Any]:
    """The sweep spec of a study's ``finetune`` part: its checkpoints are the study's runs."""
    ids = ", ".join(f"'{rid}'" for rid in run_ids)
    query = f"SELECT checkpoint FROM pretrain WHERE run_id IN ({ids})"
    return {"name": f"{name}-finetune", "checkpoints": {"query": query}, **finetune}


def _run_ids(pretrain: dict[str, Any]) -> list[str]:
    """The run ids of the submit spec ``pretrain``."""
    return [cfg.run_id() for cfg in SubmitSpec.model_validate(pretrain).runs()]


def _sub_spec(model: type[SpecModel], d: dict[str, Any]) -> None:
    """Validate one part of a study as the spec it becomes; its problems, at their key paths
    within the part, as one ``SpecError``."""
    try:
        model.model_validate(d)
    except ValidationError as e:
        raise SpecError(problems_of(e, model)) from None
