"""Bad specs through the real command line: one line on stderr that lists every problem at its
key path (with the user's own value), names the command a spec of another kind belongs to, and
writes nothing."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from test_sweep import make_checkpoint
from tests_util import HARNESS, STUDY_SPEC

from harness import cli

SUBMIT = "name: p\nexecutor: local\nbase: {arch: resnet_tiny, dataset: digits, epochs: 1}\n"
SWEEP = "name: s\ncheckpoints: {paths: [absent.pt]}\nbase: {dataset: digits, method: full}\n"
STUDY = STUDY_SPEC
KINDS = {"pre-training": SUBMIT, "sweep": SWEEP, "study": STUDY}
COMMANDS = {"pre-training": "submit", "sweep": "sweep", "study": "run"}

# (argv with SPEC for the spec file's path, spec text, substrings the one line must hold)
CASES = [
    ("submit SPEC", "", ["spec.yaml: name: required key is missing"]),
    (
        "sweep SPEC",
        "",
        ["spec.yaml: 2 problems: name: required key is missing; checkpoints: required key"],
    ),
    (
        "run SPEC",
        "",
        [
            "spec.yaml: 4 problems: name: required key is missing; pretrain: required key is "
            "missing; downstream: required key is missing; finetune: required key is missing"
        ],
    ),
    (
        "submit SPEC --set base.dataset=digts --set base.epochs=-3",
        SUBMIT,
        [
            "spec.yaml: 2 problems: base.dataset: unknown dataset 'digts'; valid: ",
            "fashion_mnist",
            "; base.epochs: must be an integer between 1 and 100000 (got -3)",
        ],
    ),
    (
        "submit SPEC --set base.dataset=digts --set resources.nodes=0 --set executor=cloud",
        SUBMIT,
        ["3 problems: executor: ", "; resources.nodes: must be ", "; base.dataset: unknown"],
    ),
    (
        "sweep SPEC --set grid.dataset=[digts] --set scheduler=fifo --set 'include=[{colour: 1}]'",
        SWEEP,
        ["3 problems: scheduler: ", "; include[0].colour: not a trial field; valid: ", "digts"],
    ),
    (
        "run SPEC --set downstream=[digts] --set findings.1.poolin=raw",
        STUDY,
        [
            "2 problems: downstream[0]: unknown dataset 'digts'; valid: ",
            "; findings.1.poolin: unknown key; valid keys: kind, x, y, level, pooling",
        ],
    ),
    (
        "run SPEC",  # a finding named 1: in YAML (a number) keeps its name in the key path
        STUDY + "findings: {1: {poolin: raw}}\n",
        ["spec.yaml: findings.1.poolin: unknown key; valid keys: kind, x, y, level, pooling"],
    ),
    (
        "run SPEC --set pretrain.base.dataset=digts --set finetune.base.method=magic",
        STUDY,
        ["2 problems: pretrain.base.dataset: unknown", "; finetune.base.method: unknown method"],
    ),
    (
        "run SPEC --set findings.9={} --set findings.3.margin=2",
        STUDY,
        ["2 problems: findings.9: unknown finding; valid: 1, 2a, 2b, 3", "findings.3.margin"],
    ),
]

# a spec of each kind given to each command that reads another kind
for _kind, _text in KINDS.items():
    for _wanted, _argv in [
        ("pre-training", "submit SPEC"),
        ("sweep", "sweep SPEC"),
        ("study", "run SPEC"),
        ("study", "report --study SPEC"),
        ("study", "correlate --x source_nc1 --y acc_linear_probe --study SPEC"),
    ]:
        if _wanted != _kind:
            _use = f"use `harness {COMMANDS[_kind]} "
            CASES.append((_argv, _text, [f"this is a {_kind} spec, not a {_wanted} spec: {_use}"]))


def one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line in this process; it must fail with one line on stderr."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    assert rc not in (0, None), err
    assert out == "", out  # refused before any work: nothing started, nothing printed
    assert err.count("\n") == 1 and err.startswith("harness: "), err
    assert "Traceback" not in err and "more)" not in err, err
    return err


def listing(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("argv, text, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_is_one_line_listing_every_problem(
    results, tmp_path, monkeypatch, capsys, argv, text, needles
):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    before = listing(tmp_path)
    err = one_line([str(spec) if a == "SPEC" else a for a in shlex.split(argv)], capsys)
    for needle in needles:
        assert needle in err, err
    assert listing(tmp_path) == before  # nothing written: no results root, no report folder
    assert not results.exists()


def test_a_spec_of_another_kind_names_the_command_with_its_path(results, tmp_path, capsys):
    spec = tmp_path / "my sweep.yaml"
    spec.write_text(SWEEP)
    r = subprocess.run([HARNESS, "submit", str(spec)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    err = r.stderr  # the installed command: one line, no traceback
    assert err == (
        f"harness: {spec}: this is a sweep spec, not a pre-training spec: "
        f"use `harness sweep '{spec}'`\n"
    )
    # overrides do not change what the file is: a sweep spec stays one with a resource flag
    assert one_line(["submit", str(spec), "--nodes", "2"], capsys) == err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize(
    "grid, include, needles",
    [
        (
            {"method": ["scl"], "layer": [-1]},
            [],
            ["grid.layer: -1 (pre_logits): unknown layer 'pre_logits' for method scl on ResNet"],
        ),
        (
            {"method": ["full"]},
            [{"method": "layer", "layer": 2}, {"method": "layer", "layer": 99}],
            ["include[1].layer: unknown layer '99' of PretrainNet; valid: ", "15:pre_logits"],
        ),
        (
            {"method": ["layer"]},
            [],
            ["base.layer: method layer needs a layer of ResNet; valid: act1, layer1.0"],
        ),
    ],
)
def test_a_bad_layer_names_its_key_and_the_users_value(
    results, tmp_path, capsys, checkpoint, grid, include, needles
):
    spec = dict(
        name="t",
        checkpoints={"paths": [checkpoint]},
        base={"dataset": "digits", "epochs": 1},
        grid=grid,
        include=include,
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    err = one_line(["sweep", str(path)], capsys)
    for needle in needles:
        assert needle in err, err
    assert not any(p.is_file() for p in listing(results))


def test_a_folder_as_checkpoint_says_it_is_a_folder(results, tmp_path, checkpoint, capsys):
    argv = ["measure", "--dataset", "digits", "--checkpoint"]
    err = one_line([*argv, str(tmp_path)], capsys)
    assert f"checkpoint {tmp_path}: is a folder; give a checkpoint file, e.g. " in err, err
    assert "<results>/checkpoints/<run id>/last.pt" in err
    folder = Path(checkpoint).parent  # a run's folder: its own checkpoint is the example
    err = one_line([*argv, str(folder)], capsys)
    assert err.endswith(f"is a folder; give a checkpoint file, e.g. {checkpoint}\n"), err
    assert not results.exists()
