"""Bounded specs: every numeric field of every spec (and of a fine-tuning trial) has a finite
range; a value outside it, or a NaN / infinity, is one line naming the key and the range, exit
code 2, and nothing is submitted or written."""

from __future__ import annotations

import inspect
import shlex
import subprocess
import typing
from dataclasses import fields as dc_fields

import pytest
from tests_util import HARNESS, STUDY_SPEC

from harness import data
from harness import finetune as ft
from harness.errors import HarnessError
from harness.spec import bounds, config, registry
from harness.spec import study as studyspec

PRETRAIN = "name: b\nexecutor: local\nbase: {arch: resnet_tiny, dataset: digits, epochs: 1}\n"
SWEEP = (
    "name: s\ncheckpoints: {paths: [absent.pt]}\n"
    "base: {dataset: digits, method: linear_probe, epochs: 1}\n"
)
STUDY = STUDY_SPEC
SPECS = {"submit": PRETRAIN, "sweep": SWEEP, "run": STUDY}

TRIAL_BASE = {"dataset": "digits", "method": "full"}

# command | the key path and the range its one line must name | arguments after the spec
CASES = """
submit | base.epochs: an integer between 1 and 100000 | --set base.epochs=99999999999999999999999
submit | base.lr: a positive number up to 100 (got nan) | --set base.lr=.nan
submit | base.lr: a positive number up to 100 (got inf) | --set base.lr=.inf
submit | base.lr: a positive number up to 100 (got -0.1) | --set base.lr=-0.1
submit | base.momentum: a number >= 0 and < 1 | --set base.momentum=1
submit | base.weight_decay: a number between 0 and 10 | --set base.weight_decay=-1
submit | base.batch_size: an integer between 1 and 65536 | --set base.batch_size=0
submit | base.per_class: an integer between 1 and 1000000 | --set base.per_class=-1
submit | base.limit: an integer between 1 and 100000000 | --set base.limit=0
submit | base.nc_limit: an integer between 1 and 100000000 | --set base.nc_limit=1000000000
submit | base.seed: an integer between 0 and 2147483647 | --set base.seed=2147483648
submit | base.seed: an integer between 0 and 2147483647 | --set base.seed=-1
submit | base.head_dim: an integer between 1 and 65536 | --set base.head_dim=0
submit | base.head_depth: an integer between 0 and 3 | --set base.head_depth=4
submit | grid.epochs[1]: an integer between 1 and 100000 | --set 'grid.epochs=[2, 0]'
submit | grid.per_class[0]: an integer between 1 and 1000000 | --set 'grid.per_class=[-1]'
submit | include[0].lr: a positive number up to 100 | --set 'include=[{lr: 1000}]'
submit | base.loss_kwargs.smoothing: a number >= 0 and < 1 \
    | --set base.loss=label_smoothing --set 'base.loss_kwargs={smoothing: 1}'
submit | base.loss_kwargs.temperature: a positive number up to 100 (got nan) \
    | --set base.loss=supcon --set 'base.loss_kwargs={temperature: .nan}'
submit | base.data_kwargs.n_per_fine: an integer between 1 and 1000000 \
    | --set base.dataset=synthetic_hier --set 'base.data_kwargs={n_per_fine: 0}'
submit | resources.nodes: an integer between 1 and 4096 | --set resources.nodes=0
submit | resources.nodes: an integer between 1 and 4096 | --nodes 5000
submit | resources.timeout_min: an integer between 1 and 525600 | --time 1000000000
submit | resources.mem_gb: a positive number up to 65536 (got nan) | --mem nan
submit | resources.cpus_per_task: an integer between 1 and 1024 | --cpus-per-task 0
submit | resources.tasks_per_node: an integer between 1 and 1024 | --set resources.tasks_per_node=0
submit | resources.signal_delay_s: an integer between 0 and 65535 | --set resources.signal_delay_s=-1
submit | resources.max_num_timeout: an integer between 0 and 1000 \
    | --set resources.max_num_timeout=-1
submit | resources.array_parallelism: an integer between 1 and 1000000 \
    | --set resources.array_parallelism=0
submit | resources.max_retries: an integer between 0 and 20 | --set resources.max_retries=21
sweep | grid.epochs[0]: an integer between 1 and 100000 | --set 'grid.epochs=[0]'
sweep | grid.per_class[1]: an integer between 1 and 1000000 | --set 'grid.per_class=[5, -1]'
sweep | base.lr: a positive number up to 100 (got nan) | --set base.lr=.nan
sweep | include[0].batch_size: an integer between 1 and 65536 | --set 'include=[{batch_size: 0}]'
sweep | base.data_kwargs.image_size: an integer between 8 and 1024 \
    | --set 'base.data_kwargs={image_size: 4}'
sweep | grid.lr.loguniform[1]: a positive number up to 100 \
    | --set search=random --set 'grid.lr={loguniform: [1.0e-4, 1.0e+3]}'
sweep | num_samples: an integer between 1 and 100000 | --set num_samples=0
sweep | cpus_per_trial: a positive number up to 1024 | --set cpus_per_trial=0
sweep | max_retries: an integer between 0 and 20 | --set max_retries=-1
run | pretrain.base.epochs: an integer between 1 and 100000 | --set pretrain.base.epochs=0
run | pretrain.resources.nodes: an integer between 1 and 4096 | --set pretrain.resources.nodes=0
run | finetune.grid.epochs[0]: an integer between 1 and 100000 | --set 'finetune.grid.epochs=[0]'
run | finetune.reduction_factor: an integer between 2 and 1000 \
    | --set finetune.reduction_factor=1
run | measure.batch_size: an integer between 1 and 65536 | --set measure.batch_size=0
run | scores.limit: an integer between 1 and 100000000 | --set scores.limit=0
run | report.bootstrap: an integer between 10 and 1000000 | --set report.bootstrap=5
"""


def _cases() -> list[tuple[str, str, list[str]]]:
    """``(command, "key: range", arguments)`` per line of ``CASES`` (``\\`` continues one)."""
    lines = CASES.replace("\\\n", "").strip().splitlines()
    rows = [[part.strip() for part in ln.split("|")] for ln in lines]
    return [(command, where, shlex.split(args)) for command, where, args in rows]


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, where, args", _cases(), ids=lambda x: " ".join(x) if isinstance(x, list) else x
)
def test_out_of_range_is_one_line_and_writes_nothing(results, tmp_path, command, where, args):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPECS[command])
    r = subprocess.run(
        [HARNESS, command, str(spec), *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    key, _, words = where.partition(": ")
    assert f"spec.yaml: {key}: must be {words}" in r.stderr, r.stderr
    assert not results.exists() or not any(results.rglob("*"))


# --------------------------------------------------------------------------------------------
# In process: every numeric field, at the edges of its range and just past them

MINIMAL = {
    config.PretrainConfig: {"arch": "resnet_tiny", "dataset": "digits"},
    config.Resources: {},
    config.SubmitSpec: {"name": "x"},
    config.SweepSpec: {"name": "x", "checkpoints": {"paths": ["x.pt"]}, "base": TRIAL_BASE},
    studyspec.MeasureSettings: {},
    studyspec.ScoreSettings: {},
    studyspec.ReportSettings: {},
    studyspec.PrimaryTest: {"x": "source_nc1", "y": "acc_linear_probe"},
}


def _numeric(annotation) -> bool:
    """``int``, ``float`` or either ``| None``."""
    return set(typing.get_args(annotation) or [annotation]) - {type(None)} <= {int, float}


def _spec_fields() -> list[tuple[type, str]]:
    return [
        (model, name)
        for model in MINIMAL
        for name, f in model.model_fields.items()
        if _numeric(f.annotation)
    ]


def _trial_fields() -> list[str]:
    hints = typing.get_type_hints(ft.TrialConfig)
    return [f.name for f in dc_fields(ft.TrialConfig) if _numeric(hints[f.name])]


def _inside(r: bounds.Range) -> list[float]:
    step = 1 if r.integer else 1e-9
    return [r.lo + step if r.lo_open else r.lo, r.hi - step if r.hi_open else r.hi]


def _outside(r: bounds.Range) -> list[float]:
    out = [r.lo if r.lo_open else r.lo - 1, r.hi if r.hi_open else r.hi + 1, 10**30]
    return out if r.integer else [*out, float("nan"), float("inf"), float("-inf")]


def test_every_numeric_field_and_option_has_a_range():
    spec_fields = {name for _, name in _spec_fields()}
    assert spec_fields - set(bounds.FIELDS) == set()
    assert set(_trial_fields()) - set(bounds.FIELDS) == set()
    loss_options = {k for m in registry.LOSSES.entries() for k in m.meta.options}
    assert loss_options <= set(bounds.OPTIONS["loss_kwargs"])
    data_options = {
        p.name
        for n in registry.DATASETS.names()
        for p in inspect.signature(data.get_builder(n).fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY and isinstance(p.default, int | float)
    }
    assert data_options <= set(bounds.OPTIONS["data_kwargs"])


@pytest.mark.parametrize("model, name", _spec_fields(), ids=lambda x: getattr(x, "__name__", x))
def test_spec_field_edges(model, name):
    r = bounds.FIELDS[name]
    assert model.model_fields[name].default is None or r.contains(model.model_fields[name].default)
    for v in _inside(r):
        assert getattr(model.from_dict({**MINIMAL[model], name: v}), name) == v
    for v in _outside(r):
        with pytest.raises(HarnessError) as e:
            model.from_dict({**MINIMAL[model], name: v}, where="w")
        assert str(e.value).startswith(f"w: {name}: must be {r.describe()} (got ")


@pytest.mark.parametrize("name", _trial_fields())
def test_trial_field_edges_in_a_sweep_and_in_the_trial(name):
    r = bounds.FIELDS[name]
    sweep = MINIMAL[config.SweepSpec]
    for v in _inside(r):
        config.SweepSpec.from_dict({**sweep, "grid": {name: [v]}})
        ft.TrialConfig("x.pt", **TRIAL_BASE, **{name: v}).check_settings()
    for v in _outside(r):
        with pytest.raises(HarnessError) as e:
            config.SweepSpec.from_dict({**sweep, "grid": {name: [_inside(r)[0], v]}}, "w")
        assert str(e.value).startswith(f"w: grid.{name}[1]: must be {r.describe()}")
        with pytest.raises(HarnessError) as e:
            ft.TrialConfig("x.pt", **TRIAL_BASE, **{name: v}).check_settings()
        assert str(e.value).startswith(f"{name} must be {r.describe()} (got ")


@pytest.mark.parametrize("field", ["loss_kwargs", "data_kwargs"])
def test_option_edges(field):
    for option, r in bounds.OPTIONS[field].items():
        for v in _inside(r):
            assert bounds.problem(field, {option: v}) is None
        for v in _outside(r):
            assert bounds.problem(field, {option: v}) == ((option,), r.problem(v))


def test_max_retries_defaults():
    assert config.Resources().max_retries == 2
    assert config.SweepSpec.from_dict(MINIMAL[config.SweepSpec]).max_retries == 2


def test_random_search_distributions_are_checked():
    base = {**MINIMAL[config.SweepSpec], "search": "random"}
    for grid, where, words in [
        ({"lr": {"loguniform": [0, 1]}}, "grid.lr.loguniform", "0 < lo <= hi"),
        ({"lr": {"uniform": [1, 0.5]}}, "grid.lr.uniform", "lo <= hi"),
        ({"lr": {"uniform": [0.1, float("nan")]}}, "grid.lr.uniform", "lo <= hi"),
        ({"epochs": {"uniform": [1, 5]}}, "grid.epochs.uniform", "use choice"),
        ({"epochs": {"choice": [1, 0]}}, "grid.epochs.choice[1]", "between 1 and 100000"),
        ({"lr": {"choice": []}}, "grid.lr.choice", "non-empty list"),
    ]:
        with pytest.raises(HarnessError) as e:
            config.SweepSpec.from_dict({**base, "grid": grid}, "w")
        assert str(e.value).startswith(f"w: {where}: ") and words in str(e.value), str(e.value)
    spec = config.SweepSpec.from_dict(
        {**base, "num_samples": 4, "grid": {"lr": {"loguniform": [1e-4, 100]}}}
    )
    assert all(1e-4 <= p["lr"] <= 100 for p in spec.points())
