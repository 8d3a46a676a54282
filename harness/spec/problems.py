"""Validation problems as key paths and one line: what a spec's validators raise
(``SpecError``, one or more ``(key path, message)`` problems that pydantic would otherwise flatten)
and how pydantic's errors become ``HarnessError`` lines that list every problem, e.g.
``spec.yaml: 2 problems: base.loss: unknown loss 'foo'; valid: ce, mse; base.epochs: ...``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from harness.errors import HarnessError

Loc = tuple[str | int, ...]  # a key path: ('include', 0, 'loss') is include[0].loss
Problem = tuple[Loc, str]  # (key path, what is wrong there)


class SpecError(ValueError):
    """Validation problems found below a field (e.g. inside ``grid``), each with its own key
    path, which pydantic would otherwise lose."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = list(problems)


def check(problems: Iterable[Problem]) -> None:
    """Raise every problem (each once, in order) as one ``SpecError``; nothing when none."""
    found = list(dict.fromkeys(problems))
    if found:
        raise SpecError(found)


def dotted(loc: Loc) -> str:
    """``('include', 0, 'loss')`` -> ``include[0].loss``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(model: type[BaseModel] | None, loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class found by walking ``loc`` down from ``model`` (None if the path
    leaves the models, e.g. into a plain dict)."""
    for part in loc:
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        if field is None:
            return None
        model = _find_model(field.annotation)
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    """The model class in ``annotation`` (itself, or inside ``X | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        return next(filter(None, map(_find_model, get_args(annotation))), None)
    return None


def _describe(err: ErrorDetails, model: type[BaseModel]) -> list[Problem]:
    """The problems of one pydantic error (several when it carries a ``SpecError``), with the
    valid choices spelled out where pydantic leaves them implicit (unknown keys) and the
    offending input."""
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    inner = err.get("ctx", {}).get("error")
    if kind == "value_error" and isinstance(inner, SpecError):
        return [(loc + at, message) for at, message in inner.problems]
    if kind in ("value_error", "assertion_error") and inner is not None:
        return [(loc, str(inner))]  # our own validators' messages already name value and choices
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        valid = f"; valid keys: {', '.join(owner.model_fields)}" if owner else ""
        return [(loc, f"unknown key{valid}")]
    if kind == "missing":
        return [(loc, "required key is missing")]
    value = err.get("input")
    shown = "" if isinstance(value, Mapping) else f" (got {value!r})"
    return [(loc, f"{err['msg']}{shown}")]


def problems_of(exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """Every problem of ``exc``, each once, in the order pydantic found them."""
    return list(dict.fromkeys(p for err in exc.errors() for p in _describe(err, model)))


def one_line(where: str, problems: Sequence[Problem]) -> str:
    """``where: dotted.path: message``, or for several ``where: N problems: path: message;
    path: message``, with any newline flattened."""
    items = [": ".join(p for p in (dotted(loc), message) if p) for loc, message in problems]
    count = f"{len(items)} problems" if len(items) > 1 else ""
    line = ": ".join(p for p in (where, count, "; ".join(items)) if p)
    return " ".join(line.splitlines())


def harness_error(where: str, exc: ValidationError, model: type[BaseModel]) -> HarnessError:
    """Every problem of ``exc`` as one HarnessError line."""
    return HarnessError(one_line(where, problems_of(exc, model)), code=2)
