"""Spec files in: YAML read with ``yaml.safe_load``, ``key.path=value`` overrides applied, the
kind of spec recognised, then validated as its typed model (``load_spec``). Every problem is one
``HarnessError`` line saying where (file and dotted key path)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import yaml

from harness.errors import HarnessError
from harness.spec.config import SpecModel, SubmitSpec, SweepSpec
from harness.spec.study import StudySpec


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


# Each kind of spec file: its model and the subcommand that reads it.
SPEC_KINDS: dict[str, tuple[type[SpecModel], str]] = {
    "pre-training": (SubmitSpec, "submit"),
    "sweep": (SweepSpec, "sweep"),
    "study": (StudySpec, "run"),
}


def _other_kind(data: Mapping[str, Any], model: type[SpecModel], where: str) -> str | None:
    """When the top-level keys of ``data`` say it is a spec of another kind than ``model``'s,
    one line naming its kind and the command that reads it; else None (validate as asked).

    Another kind is recognised when its keys are all of that kind's, its required ones
    included, or when the file has a key only that kind has and none only ``model`` has."""
    kinds = SPEC_KINDS
    names = {m: name for name, (m, _) in kinds.items()}
    keys = set(data)
    if model not in names or keys <= set(model.model_fields):
        return None

    def own(m: type[SpecModel]) -> set[str]:  # the keys no other kind has
        return set(m.model_fields).difference(*(o.model_fields for o in names if o is not m))

    def fits(m: type[SpecModel]) -> bool:
        required = {n for n, f in m.model_fields.items() if f.is_required()}
        return required <= keys <= set(m.model_fields)

    best = max((m for m in names if m is not model), key=lambda m: (fits(m), len(keys & own(m))))
    if not fits(best) and not (keys & own(best) and not keys & own(model)):
        return None
    command = kinds[names[best]][1]
    return (
        f"{where}: this is a {names[best]} spec, not a {names[model]} spec: "
        f"use `harness {command} {shlex.quote(where)}`"
    )


S = TypeVar("S", bound=SpecModel)


@overload
def load_spec(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> SubmitSpec: ...
@overload
def load_spec(path: str | os.PathLike[str], overrides: Sequence[str], kind: type[S]) -> S: ...
@overload
def load_spec(path: str | os.PathLike[str], *, kind: type[S]) -> S: ...
def load_spec(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    kind: type[SpecModel] = SubmitSpec,
) -> SpecModel:
    """Read a spec (a ``SubmitSpec`` unless ``kind`` says otherwise), apply ``overrides`` and
    validate it (all runs included). A file of another kind of spec (a sweep spec given to
    ``harness submit``) is one line saying so and naming the command that reads it."""
    where = str(path)
    data = load_yaml(path)
    if (other := _other_kind(data, kind, where)) is not None:
        raise HarnessError(other, code=2)
    return kind.from_dict(apply_overrides(data, overrides, where), where)
