"""The one registry (harness.spec.registry): every pluggable name declared once, read by
validation, the CLI, the views and the messages alike; targets resolve to what they say."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.spec import config, registry
from harness.spec import study as studyspec
from harness.spec.load import load_spec
from harness.spec.registry import Entry, NoMeta, Registry
from harness.spec.trial import TrialConfig

PKG = Path(__file__).resolve().parents[1] / "harness"
KINDS = {
    "method": registry.METHODS,
    "executor": registry.EXECUTORS,
    "loss": registry.LOSSES,
    "dataset": registry.DATASETS,
    "score": registry.SCORES,
}


def _literal_strings(node: ast.AST) -> list[str]:
    return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def declarations(names: set[str]) -> dict[str, list[str]]:
    """Where in the package each name is declared: an ``Entry(name, ...)``, or a tuple, list, set
    or dict-key literal holding two or more of ``names`` (a list of them spelled out again)."""
    found: dict[str, list[str]] = {n: [] for n in names}
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(PKG))
        for node in ast.walk(ast.parse(path.read_text())):
            held: list[str] = []
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Entry":
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and first.value in names:
                    found[first.value].append(f"{rel}:{node.lineno}")
                continue
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                held = [s for s in _literal_strings(node) if s in names]
            elif isinstance(node, ast.Dict):
                keys = ast.Tuple(elts=[k for k in node.keys if k is not None])
                held = [s for s in _literal_strings(keys) if s in names]
            if len(held) >= 2:
                for s in held:
                    found[s].append(f"{rel}:{node.lineno}")
    return found


@pytest.mark.parametrize("kind", ["method", "executor", "loss"])
def test_every_name_is_declared_once(kind):
    reg = KINDS[kind]
    found = declarations(set(reg.names()))
    assert all(len(w) == 1 and w[0].startswith("spec/registry.py:") for w in found.values()), {
        n: w for n, w in found.items() if len(w) != 1
    }


def test_the_declaration_finder_sees_a_second_list():
    """The finder is not blind: a spelled-out list in some module would count."""
    tree = ast.parse('X = ("layer", "scl")\nY = {"slurm": 1, "local": 2}\n')
    tuple_node = next(n for n in ast.walk(tree) if isinstance(n, ast.Tuple))
    assert _literal_strings(tuple_node) == ["layer", "scl"]
    assert len(declarations(set(registry.METHODS.names()))["scl"]) == 1


def test_no_module_words_its_own_unknown_name_message():
    """'unknown <kind> ...' is written once, by ``Registry.unknown``."""
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for kind in KINDS:
                    assert f"unknown {kind} " not in node.value or node.value.count("\n") > 1, (
                        f"{path.relative_to(PKG)}:{node.lineno} words 'unknown {kind}'"
                    )


def test_a_registry_refuses_a_second_declaration_and_names_what_is_valid():
    with pytest.raises(ValueError, match="'a' is declared twice"):
        Registry("thing", Entry("a", NoMeta()), Entry("a", NoMeta()))
    reg = Registry("thing", Entry("b", NoMeta()), Entry("a", NoMeta()), others="or any x")
    assert reg.names() == ("b", "a") and "a" in reg and "c" not in reg and 3 not in reg
    assert reg.unknown("c") == "unknown thing 'c'; valid: b, a, or any x"
    assert reg.problem("a") is None and reg.problem("c") == reg.unknown("c")
    with pytest.raises(HarnessError) as e:
        reg["c"]
    assert str(e.value) == reg.unknown("c")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_target_resolves(kind):
    for e in KINDS[kind].entries():
        if e.target:
            assert callable(KINDS[kind].load(e.name)), e.target


def test_a_loss_entrys_options_are_its_constructors_keyword_parameters():
    for e in registry.LOSSES.entries():
        cls = registry.LOSSES.load(e.name)
        params = inspect.signature(cls).parameters.values()
        kw = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
        assert kw == dict(e.meta.options), e.name


def test_dataset_entries_are_builders():
    from harness import data

    for name in registry.DATASETS.names():
        assert isinstance(data.get_builder(name), data.Builder)


def test_methods_read_one_entry():
    from harness.finetune import methods

    for e in registry.METHODS.entries():
        m = methods.method_of(e.name)
        assert (m.needs_layer, m.skip) == (e.meta.needs_layer, e.meta.skip)
    assert registry.LAYER_METHODS == tuple(
        n for n in registry.METHODS.names() if registry.METHODS.meta(n).needs_layer
    )
    with pytest.raises(HarnessError) as e:
        methods.method_of("lora")
    assert str(e.value) == registry.METHODS.unknown("lora")


def test_the_cli_offers_the_registered_executors():
    from harness.cli import commands

    parser = commands.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["submit"]
    choices = next(a.choices for a in sub._actions if a.dest == "executor")
    assert tuple(choices) == registry.EXECUTOR_CHOICES


def test_an_unknown_name_in_a_spec_is_the_registrys_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbase: {arch: resnet_tiny, dataset: digits, loss: focal}\n")
    with pytest.raises(HarnessError) as e:
        load_spec(path)
    assert str(e.value) == f"{path}: base.loss: {registry.LOSSES.unknown('focal')}"


def _annotations_mention_any(tp: object) -> bool:
    return tp is typing.Any or any(_annotations_mention_any(a) for a in typing.get_args(tp))


@pytest.mark.parametrize(
    "model",
    [config.SubmitSpec, config.SweepSpec, config.Resources, studyspec.StudySpec, TrialConfig],
    ids=lambda m: m.__name__,
)
def test_spec_types_are_typed(model):
    hints = typing.get_type_hints(model)
    assert hints and not [n for n, t in hints.items() if _annotations_mention_any(t)]


def test_load_spec_returns_the_kind_asked_for(tmp_path):
    hints = typing.get_type_hints(load_spec)
    assert not _annotations_mention_any(hints["return"])
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbase: {arch: resnet_tiny, dataset: digits}\n")
    assert type(load_spec(path)) is config.SubmitSpec
