"""The README's spec reference is complete and valid: each of its YAML blocks loads as the spec
kind it documents, and lists every key of every spec type (a key added to a spec and not
documented fails here)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from harness.finetune import TrialConfig
from harness.spec import config
from harness.spec import study as studyspec
from harness.spec.load import load_spec

README = Path(__file__).resolve().parents[1] / "README.md"


def spec_blocks() -> list[str]:
    """The YAML blocks of the README's "Spec reference" section, in order."""
    text = README.read_text()
    section = text.split("## Spec reference", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.S)


def keys(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


TRIAL_KEYS = {f.name for f in dataclasses.fields(TrialConfig)} - {"checkpoint"}
# (block index, spec kind, {key path in the block: the fields it must list})
EXPECTED = [
    (
        0,
        config.SubmitSpec,
        {
            (): keys(config.SubmitSpec),
            ("resources",): keys(config.Resources),
            ("base",): keys(config.PretrainConfig),
        },
    ),
    (
        1,
        config.SweepSpec,
        {
            (): keys(config.SweepSpec),
            ("checkpoints",): keys(config.CheckpointSelect),
            ("base",): TRIAL_KEYS,
        },
    ),
    (
        2,
        studyspec.StudySpec,
        {
            (): keys(studyspec.StudySpec),
            ("measure",): keys(studyspec.MeasureSettings),
            ("scores",): keys(studyspec.ScoreSettings),
            ("report",): keys(studyspec.ReportSettings),
            ("findings", "1"): keys(studyspec.PrimaryTest),
        },
    ),
]


def test_the_reference_has_one_block_per_spec_kind():
    assert len(spec_blocks()) == len(EXPECTED)


@pytest.mark.parametrize("index, kind, wanted", EXPECTED, ids=["submit", "sweep", "study"])
def test_each_block_loads_as_its_kind_and_lists_every_key(tmp_path, index, kind, wanted):
    text = spec_blocks()[index]
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    spec = load_spec(path, kind=kind)
    assert isinstance(spec, kind)
    data = yaml.safe_load(text)
    for where, fields in wanted.items():
        node = data
        for part in where:
            node = node[part]
        assert set(node) == fields, (where, sorted(fields ^ set(node)))
