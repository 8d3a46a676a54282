"""The range of every numeric setting a spec or a trial may give, in one table.

Generous but finite: anything a real study could use passes, while a typo such as
``epochs: 99999999999999999999999`` or ``lr: .nan`` is refused where the spec is read, in one line
naming the key and its range, before anything is submitted. ``config`` checks spec fields by name
against ``FIELDS`` (and loss/dataset options against ``OPTIONS``); a fine-tuning trial checks its
settings against the same table. This module imports nothing, so the submitting path stays light.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """``lo``..``hi``, each end included unless ``lo_open`` / ``hi_open``; ``integer`` fields take
    whole numbers only, the others any finite real."""

    lo: int | float
    hi: int | float
    integer: bool = True
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        """E.g. ``an integer between 1 and 100000``, ``a positive number up to 100``."""
        noun = "integer" if self.integer else "number"
        if not (self.lo_open or self.hi_open):
            return f"{'an' if self.integer else 'a'} {noun} between {self.lo} and {self.hi}"
        if self.lo_open and self.lo == 0 and not self.hi_open:
            return f"a positive {noun} up to {self.hi}"
        low = f"{'>' if self.lo_open else '>='} {self.lo}"
        high = f"{'<' if self.hi_open else '<='} {self.hi}"
        return f"{'an' if self.integer else 'a'} {noun} {low} and {high}"

    def contains(self, value: Any) -> bool:
        kind = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            return False
        if not self.integer and not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def problem(self, value: Any) -> str | None:
        """``must be <range> (got <value>)``, or None when ``value`` is in range."""
        return None if self.contains(value) else f"must be {self.describe()} (got {value!r})"


SEED = Range(0, 2**31 - 1)
EPOCHS = Range(1, 100_000)
BATCH = Range(1, 65_536)
SAMPLES = Range(1, 100_000_000)  # sample limits (limit, nc_limit)
PER_CLASS = Range(1, 1_000_000)
LR = Range(0, 100, integer=False, lo_open=True)
FRACTION = Range(0, 1, integer=False, hi_open=True)  # momentum, label smoothing
WEIGHT_DECAY = Range(0, 10, integer=False)
CPUS = Range(1, 1024)
COUNT = Range(1, 100_000)  # draws, concurrent trials
IMAGE_SIZE = Range(8, 1024)

# spec and trial fields, by name (a name means the same thing in every spec that has it)
FIELDS: dict[str, Range] = {
    # a pre-training run (and, where the names agree, a fine-tuning trial)
    "head_depth": Range(0, 3),
    "head_dim": Range(1, 65_536),
    "epochs": EPOCHS,
    "batch_size": BATCH,
    "lr": LR,
    "momentum": FRACTION,
    "weight_decay": WEIGHT_DECAY,
    "seed": SEED,
    "per_class": PER_CLASS,
    "limit": SAMPLES,
    "nc_limit": SAMPLES,
    # what each job asks the scheduler for
    "nodes": Range(1, 4096),
    "tasks_per_node": CPUS,
    "cpus_per_task": CPUS,
    "mem_gb": Range(0, 65_536, integer=False, lo_open=True),
    "timeout_min": Range(1, 525_600),  # a year
    "signal_delay_s": Range(0, 65_535),  # SLURM's --signal maximum
    "max_num_timeout": Range(0, 1000),
    "array_parallelism": Range(1, 1_000_000),
    "max_retries": Range(0, 20),
    # a fine-tuning sweep
    "num_samples": COUNT,
    "search_seed": SEED,
    "grace_period": EPOCHS,
    "reduction_factor": Range(2, 1000),
    "cpus_per_trial": Range(0, 1024, integer=False, lo_open=True),
    "max_concurrent": COUNT,
    # the report
    "bootstrap": Range(10, 1_000_000),
    # a finding's primary test
    "margin": Range(0, 1, integer=False),
    "min_units": Range(2, 100_000),
    "ci": Range(0, 1, integer=False, lo_open=True, hi_open=True),
}

# numeric options inside the option mappings of a run or trial, by mapping and option name
OPTIONS: dict[str, dict[str, Range]] = {
    "loss_kwargs": {
        "smoothing": FRACTION,
        "scale": Range(0, 10_000, integer=False, lo_open=True),
        "temperature": Range(0, 100, integer=False, lo_open=True),
    },
    "data_kwargs": {
        "coarse": Range(1, 10_000),
        "fine_per_coarse": Range(1, 10_000),
        "n_per_fine": PER_CLASS,
        "image_size": IMAGE_SIZE,
        "data_seed": SEED,
    },
}


def problems(name: str, value: Any) -> list[tuple[tuple[str, ...], str]]:
    """``(key path below name, message)`` for ``value`` out of the range of field ``name``, or
    for an option mapping, for each of its options that is; [] when in range. Names without a
    range pass."""
    if name in OPTIONS:
        if not isinstance(value, Mapping):
            return []  # the field's type check says what is wrong
        found = [
            (key, OPTIONS[name][key].problem(v)) for key, v in value.items() if key in OPTIONS[name]
        ]
        return [((key,), message) for key, message in found if message is not None]
    rng = FIELDS.get(name)
    message = rng.problem(value) if rng is not None else None
    return [] if message is None else [((), message)]


def problem(name: str, value: Any) -> tuple[tuple[str, ...], str] | None:
    """The first of ``problems(name, value)``, or None."""
    return next(iter(problems(name, value)), None)


def distribution_problem(name: str, kind: str, arg: Any) -> str | None:
    """What is wrong with a random-search distribution of field ``name``, or None: ``choice``
    takes a non-empty list; ``uniform`` / ``loguniform`` take ``[lo, hi]`` (``lo > 0`` for
    loguniform) and only for a real-valued field (their draws are not whole numbers). The values
    themselves are checked against the field's range like any other."""
    if kind == "choice":
        return None if isinstance(arg, list) and arg else f"must be a non-empty list (got {arg!r})"
    if name in FIELDS and FIELDS[name].integer:
        return f"draws real numbers, but {name} takes integers; use choice"
    pair = isinstance(arg, list) and len(arg) == 2
    pair = pair and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in arg)
    if pair and arg[0] <= arg[1] and (kind == "uniform" or arg[0] > 0):
        return None
    low = "0 < lo" if kind == "loguniform" else "lo"
    return f"must be [lo, hi] with {low} <= hi (got {arg!r})"
