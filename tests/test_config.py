"""Specs: YAML -> validated runs, overrides, and one-line errors that say where, what and what
would be valid."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.spec.config import PretrainConfig, SubmitSpec
from harness.spec.load import load_spec, load_yaml

SPEC = """\
name: pretrain_quick
executor: auto
resources: {nodes: 1, tasks_per_node: 1, cpus_per_task: 1, timeout_min: 60}
base: {arch: resnet_tiny, dataset: fashion_mnist, epochs: 2}
grid:
  arch: [resnet_tiny, vit_tiny]
  loss: [ce, label_smoothing, mse, supcon]
  augment: [none, strong]
"""

# A spec whose base fields are not all overridden by the grid, for base-level error tests.
SMALL = """\
name: small
base: {arch: resnet_tiny, dataset: fashion_mnist, loss: ce}
grid:
  seed: [0, 1]
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def one_line_error(fn, *args, **kwargs) -> str:
    """Call ``fn``; it must raise a HarnessError (code 2) with a one-line message."""
    with pytest.raises(HarnessError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert info.value.code == 2
    return message


def test_grid_expands_in_order_with_base_applied(tmp_path):
    spec = load_spec(write(tmp_path, SPEC))
    runs = spec.runs()
    assert len(runs) == 2 * 4 * 2
    # keys in YAML order (arch outermost, augment innermost), values in list order
    combos = [(r.arch, r.loss, r.augment) for r in runs]
    assert combos[:3] == [
        ("resnet_tiny", "ce", "none"),
        ("resnet_tiny", "ce", "strong"),
        ("resnet_tiny", "label_smoothing", "none"),
    ]
    assert combos[-1] == ("vit_tiny", "supcon", "strong")
    assert all(r.epochs == 2 and r.dataset == "fashion_mnist" for r in runs)
    assert all(r.batch_size == 128 for r in runs)  # defaults fill the rest
    assert len({r.run_id() for r in runs}) == len(runs)
    assert runs[0].short_name() == "resnet_tiny-ce-none-h0-e2-s0"
    assert spec.resources.nodes == 1 and spec.executor == "auto"


def test_include_adds_runs_merged_over_base(tmp_path):
    spec = load_spec(
        write(tmp_path, SMALL + "include:\n  - {loss: supcon, head_depth: 2, head_dim: 64}\n")
    )
    runs = spec.runs()
    assert len(runs) == 3
    extra = runs[-1]
    assert (extra.loss, extra.head_depth, extra.head_dim) == ("supcon", 2, 64)
    assert extra.seed == 0 and extra.arch == "resnet_tiny"  # base values, grid not crossed


def test_duplicate_runs_are_dropped_keeping_the_first(tmp_path):
    # include repeats grid run seed=1; the grid repeats seed 0
    text = SMALL.replace("[0, 1]", "[0, 1, 0]") + "include:\n  - {seed: 1}\n  - {seed: 7}\n"
    runs = load_spec(write(tmp_path, text)).runs()
    assert [r.seed for r in runs] == [0, 1, 7]


def test_run_id_stable_across_key_order_and_sensitive_to_values():
    a = PretrainConfig.from_dict({"arch": "resnet_tiny", "dataset": "digits", "lr": 0.1})
    b = PretrainConfig.from_dict({"lr": 0.1, "dataset": "digits", "arch": "resnet_tiny"})
    c = PretrainConfig.from_dict({"arch": "resnet_tiny", "dataset": "digits", "lr": 0.2})
    assert a.run_id() == b.run_id()
    assert a.run_id() != c.run_id()
    assert len(a.run_id()) == 16


def test_overrides_scalar_list_nested_and_top_level(tmp_path):
    path = write(tmp_path, SPEC)
    spec = load_spec(
        path,
        ["base.epochs=3", "grid.loss=[ce, mse]", "resources.nodes=2", "executor=local"],
    )
    runs = spec.runs()
    assert len(runs) == 2 * 2 * 2
    assert {r.loss for r in runs} == {"ce", "mse"}
    assert all(r.epochs == 3 for r in runs)
    assert spec.resources.nodes == 2 and spec.executor == "local"
    # null works, and a new nested key is created
    spec = load_spec(path, ["base.per_class=null", "base.data_kwargs.size=16"])
    assert spec.runs()[0].per_class is None and spec.runs()[0].data_kwargs == {"size": 16}
    # the file itself is unchanged
    assert load_spec(path).runs()[0].epochs == 2


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["base.bogus=1"], ["spec.yaml: base.bogus", "unknown key", "head_depth"]),
        (["noequals"], ["noequals", "key.path=value"]),
        (["base.epochs.deeper=1"], ["base.epochs", "not a mapping"]),
    ],
)
def test_bad_overrides(tmp_path, overrides, needles):
    message = one_line_error(load_spec, write(tmp_path, SPEC), overrides)
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(
    "text, overrides, needles",
    [
        (SMALL + "color: red\n", [], ["spec.yaml: color", "unknown key", "grid"]),
        (SMALL, ["base.colour=red"], ["spec.yaml: base.colour", "loss_kwargs"]),
        (SMALL, ["base.dataset=nope"], ["spec.yaml: base.dataset", "'nope'", "fashion_mnist"]),
        (SMALL, ["base.loss=nope"], ["spec.yaml: base.loss", "'nope'", "supcon"]),
        (SMALL, ["base.epochs=-3"], ["spec.yaml: base.epochs", "between 1 and 100000 (got -3)"]),
        (SMALL, ["base.head_depth=4"], ["spec.yaml: base.head_depth", "between 0 and 3 (got 4)"]),
        (
            SMALL,
            ["base.augment=heavy"],
            ["base.augment", "unknown augment 'heavy'; valid: none, weak, strong"],
        ),
        (SMALL, ["base.loss_kwargs={tau: 1}"], ["base.loss_kwargs.tau", "no option 'tau'"]),
        (
            SMALL,
            ["executor=cloud"],
            [
                "spec.yaml: executor",
                "unknown executor 'cloud'; valid: slurm, local, debug, or auto",
            ],
        ),
        (SMALL, ["name=has space"], ["spec.yaml: name", "A-Za-z0-9_.-"]),
        (SMALL, ["resources.nodes=0"], ["spec.yaml: resources.nodes", "between 1 and 4096"]),
        (SMALL, ["resources.gpus=1"], ["resources.gpus", "tasks_per_node"]),
        (SMALL, ["grid.seed=1"], ["spec.yaml: grid.seed", "non-empty list"]),
        (SMALL, ["grid.seed=[]"], ["spec.yaml: grid.seed", "non-empty list"]),
        (SMALL, ["grid.colour=[1]"], ["spec.yaml: grid.colour", "augment"]),
        (SMALL, ["grid.loss=[ce, nope]"], ["spec.yaml: grid.loss", "'nope'", "supcon"]),
        (SMALL, ["include=[{head_depth: 9}]"], ["spec.yaml: include[0].head_depth"]),
        ("name: x\nbase: {dataset: digits}\n", [], ["spec.yaml: base.arch", "missing"]),
    ],
)
def test_bad_spec_values_name_path_and_choices(tmp_path, text, overrides, needles):
    message = one_line_error(load_spec, write(tmp_path, text), overrides)
    for needle in needles:
        assert needle in message


def test_unknown_arch_lists_presets_and_timm(tmp_path):
    message = one_line_error(load_spec, write(tmp_path, SMALL), ["base.arch=no_such_net"])
    assert "spec.yaml: base.arch" in message
    assert "resnet_tiny" in message and "timm" in message


def test_every_problem_is_listed(tmp_path):
    message = one_line_error(load_spec, write(tmp_path, SMALL), ["base.epochs=0", "base.lr=0"])
    assert "spec.yaml: 2 problems: base.epochs: must be an integer" in message, message
    assert "; base.lr: must be a positive number up to 100 (got 0.0)" in message
    message = one_line_error(load_spec, write(tmp_path, SMALL), ["executor=x", "resources.nodes=0"])
    assert "spec.yaml: 2 problems: executor: " in message and "; resources.nodes: " in message
    assert "more)" not in message


def test_a_wrong_field_does_not_hide_the_runs_problems(tmp_path):
    """The runs are checked even when another field is wrong: a bad resource and a typo'd
    dataset are reported together, each at its key, and one problem of many runs once."""
    overrides = ["resources.nodes=0", "base.dataset=digts", "base.loss_kwargs={tau: 1, s: 2}"]
    message = one_line_error(load_spec, write(tmp_path, SMALL), overrides)
    assert "spec.yaml: 4 problems: resources.nodes: must be" in message, message
    assert "; base.dataset: unknown dataset 'digts'; valid: " in message
    assert "base.loss_kwargs.tau: loss 'ce' has no option 'tau'" in message
    assert "base.loss_kwargs.s: loss 'ce' has no option 's'" in message
    assert message.count("digts") == 1  # two runs (seed 0 and 1), one problem


def test_a_wrong_field_the_runs_read_leaves_them_unchecked(tmp_path):
    # the grid itself is wrong: no run can be built, so only the grid's problems are named
    message = one_line_error(load_spec, write(tmp_path, SMALL), ["grid.seed=3", "grid.x=[1]"])
    assert "spec.yaml: 2 problems: grid.seed: must be a non-empty list" in message
    assert "; grid.x: not a run field" in message and "base" not in message


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "name: x\nbase: {arch: resnet_tiny\ngrid: [\n")
    message = one_line_error(load_yaml, path)
    assert "spec.yaml" in message and "line " in message and "column " in message


def test_missing_file(tmp_path):
    message = one_line_error(load_spec, tmp_path / "absent.yaml")
    assert "absent.yaml" in message and "no such file" in message


def test_top_level_must_be_a_mapping(tmp_path):
    message = one_line_error(load_spec, write(tmp_path, "- name: x\n- base: {}\n"))
    assert "spec.yaml" in message and "mapping" in message and "list" in message


def test_from_dict_uses_where_and_submit_spec_validates_runs_eagerly():
    message = one_line_error(PretrainConfig.from_dict, {"arch": "resnet_tiny"}, where="cli")
    assert message.startswith("cli: dataset")
    message = one_line_error(
        SubmitSpec.from_dict,
        {"name": "x", "base": {"arch": "resnet_tiny", "dataset": "digits", "momentum": 1.0}},
        where="inline",
    )
    assert message.startswith("inline: base.momentum") and ">= 0 and < 1 (got 1.0)" in message


def test_optimizer_default_keeps_earlier_run_ids_and_adamw_is_a_new_run():
    """``optimizer`` came after run ids were handed out: at its default it is not hashed."""
    from harness import store
    from harness.train import pretrain

    cfg = PretrainConfig(arch="resnet_tiny", dataset="digits")
    dump = cfg.model_dump(mode="json")
    assert dump.pop("optimizer") == "sgd"
    assert (
        cfg.run_id() == store.run_id(dump) == store.Provenance.collect(cfg.identity(), "x").run_id
    )
    adamw = PretrainConfig(arch="resnet_tiny", dataset="digits", optimizer="adamw")
    assert adamw.run_id() != cfg.run_id()
    import torch

    w = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(pretrain.OPTIMIZERS["adamw"](w, adamw), torch.optim.AdamW)
    assert isinstance(pretrain.OPTIMIZERS["sgd"](w, cfg), torch.optim.SGD)
    with pytest.raises(HarnessError, match="optimizer"):
        PretrainConfig.from_dict({"arch": "resnet_tiny", "dataset": "digits", "optimizer": "adam"})
