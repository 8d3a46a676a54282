"""The spec of a whole study (`harness run`): its parts, and the analyses it declares up front.

A study names its pre-training grid, downstream datasets and fine-tuning sweep (each validated as
the submit or sweep spec it becomes) and, per finding, the one primary test whose interval gives
the verdict (``PrimaryTest``). The defaults in ``DEFAULT_FINDINGS`` are the paper's claims; a
spec overrides any field of any finding. Declaring the test before the data exist is what makes
the verdict a test rather than a choice among groupings.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, ValidationError, field_validator, model_validator

from harness.config import SubmitSpec, SweepSpec, _choices, _describe, _Spec, _SpecError


class MeasureSettings(_Spec):
    """Downstream NC per layer of every checkpoint."""

    split: Literal["train", "val", "test"] = "train"
    limit: int | None = 2000
    layers: str = "all"
    batch_size: int = 256


class ScoreSettings(_Spec):
    limit: int | None = 2000


class ReportSettings(_Spec):
    out: str | None = None  # default reports/<study name>
    bootstrap: int = 1000
    seed: int = 0


class PrimaryTest(_Spec):
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


class StudySpec(_Spec):
    """A ``harness run`` file: the pre-training grid (a submit spec's ``resources``/``base``/
    ``grid``/``include``), the downstream datasets, the fine-tuning sweep (a sweep spec's
    ``base``/``grid``/``include``/search settings; its checkpoints are the study's own runs),
    the measurement, scoring and report settings, and per finding its primary test (fields not
    given take ``DEFAULT_FINDINGS``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    executor: Literal["auto", "slurm", "local", "debug"] = "auto"
    pretrain: dict[str, Any]
    downstream: list[str] = Field(min_length=1)
    measure: MeasureSettings = MeasureSettings()
    finetune: dict[str, Any]
    scores: ScoreSettings = ScoreSettings()
    report: ReportSettings = ReportSettings()
    findings: dict[str, dict[str, Any]] = {}

    @field_validator("downstream")
    @classmethod
    def _known_downstream(cls, v: list[str]) -> list[str]:
        from harness import data

        for name in v:
            if name not in data.names() and not name.startswith("imagefolder:"):
                raise ValueError(f"unknown dataset {name!r}; valid: {_choices(data.names())}")
        return v

    @model_validator(mode="after")
    def _valid_parts(self) -> Self:
        for part, build in (("pretrain", self.pretrain_spec), ("finetune", self.sweep_spec)):
            try:
                build()
            except ValidationError as e:
                loc, message, more = _describe(e.errors()[0], SubmitSpec)
                raise _SpecError((part, *loc), message, more + e.error_count() - 1) from None
            except _SpecError as e:
                raise _SpecError((part, *e.loc), e.message, e.more) from None
        for key in self.findings:
            if key not in DEFAULT_FINDINGS:
                raise _SpecError(
                    ("findings", key), f"unknown finding; valid: {_choices(DEFAULT_FINDINGS)}"
                )
        try:
            self.primary_tests()
        except ValidationError as e:
            loc, message, more = _describe(e.errors()[0], PrimaryTest)
            raise _SpecError(("findings", *loc), message, more) from None
        return self

    def primary_tests(self) -> dict[str, PrimaryTest]:
        """Each finding's primary test: its defaults overridden by the spec's fields."""
        return {
            key: PrimaryTest.model_validate({**default, **self.findings.get(key, {})})
            for key, default in DEFAULT_FINDINGS.items()
        }

    def run_ids(self) -> list[str]:
        """The study's own pre-training run ids (what its findings and report read)."""
        return [cfg.run_id() for cfg in self.pretrain_spec().runs()]

    def pretrain_spec(self) -> SubmitSpec:
        return SubmitSpec.model_validate(
            {"name": f"{self.name}-pretrain", "executor": self.executor, **self.pretrain}
        )

    def sweep_spec(self) -> SweepSpec:
        ids = ", ".join(f"'{rid}'" for rid in self.run_ids())
        query = f"SELECT checkpoint FROM pretrain WHERE run_id IN ({ids})"
        return SweepSpec.model_validate(
            {"name": f"{self.name}-finetune", "checkpoints": {"query": query}, **self.finetune}
        )
