"""Helpers shared by tests (plain module: importable from the tests folder)."""

import sys
from pathlib import Path

HARNESS = str(Path(sys.executable).with_name("harness"))


def nc_row(**kw):
    """One valid `nc` row (fields overridable)."""
    row = dict(
        run_id="r",
        dataset="d",
        split="train",
        layer="stages.0",
        layer_index=0,
        depth_frac=0.25,
        metric="nc1",
        value=0.5,
        n=100,
    )
    row.update(kw)
    return row


# The smallest valid study spec (one tiny run, one downstream set, one linear probe).
STUDY_SPEC = """\
name: st
executor: local
pretrain: {base: {arch: resnet_tiny, dataset: digits, epochs: 1}}
downstream: [digits]
finetune: {base: {dataset: digits, method: linear_probe, epochs: 1}}
"""
