"""The package's shape, read from its source (``ast``, nothing imported): every module sits in a room, the
rooms' imports point one way (down the layers of ``MAY_IMPORT``), no module imports one that imports it
back, the pure measures stay free of torch and of training, and a rule's private members stay inside
``repanalysis.rules``.

Every module of every package that ``pyproject.toml`` lists is parsed; an import anywhere in a module (at
its top or inside a function) is an arrow from it to the deepest module of the package it names.
"""

from __future__ import annotations

import ast
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_BELOW_EXPERIMENTS = {"repanalysis.errors", "repanalysis.runtime", "repanalysis.config", "repanalysis.nn",
                      "repanalysis.datasets", "repanalysis.rules", "repanalysis.runfile", "repanalysis.training",
                      "repanalysis.measures", "repanalysis.analysis", "repanalysis.probes", "repanalysis.figures"}

MAY_IMPORT = {
    "repanalysis.errors": set(),
    "repanalysis.runtime": {"repanalysis.errors"},
    "repanalysis.measures": {"repanalysis.errors", "repanalysis.runtime"},
    "repanalysis.nn": {"repanalysis.errors"},
    "repanalysis.datasets": {"repanalysis.errors"},
    "repanalysis.config": {"repanalysis.errors", "repanalysis.nn"},
    "repanalysis.rules": {"repanalysis.errors", "repanalysis.config", "repanalysis.nn"},
    "repanalysis.runfile": {"repanalysis.errors", "repanalysis.runtime", "repanalysis.config", "repanalysis.nn",
                            "repanalysis.rules"},
    "repanalysis.training": {"repanalysis.errors", "repanalysis.runtime", "repanalysis.config", "repanalysis.nn",
                             "repanalysis.datasets", "repanalysis.rules", "repanalysis.runfile",
                             "repanalysis.measures"},
    "repanalysis.analysis": {"repanalysis.errors", "repanalysis.runtime", "repanalysis.config", "repanalysis.nn",
                             "repanalysis.datasets", "repanalysis.rules", "repanalysis.runfile",
                             "repanalysis.training", "repanalysis.measures"},
    "repanalysis.probes": {"repanalysis.errors", "repanalysis.runtime", "repanalysis.runfile",
                           "repanalysis.measures", "repanalysis.analysis"},
    "repanalysis.figures": {"repanalysis.errors", "repanalysis.runtime", "repanalysis.runfile",
                            "repanalysis.measures", "repanalysis.analysis"},
    "repanalysis.experiments": _BELOW_EXPERIMENTS,
    "repanalysis.cli": _BELOW_EXPERIMENTS | {"repanalysis.experiments"},
    "repanalysis": {"repanalysis.runfile"},
}
"""Each room (a subpackage, or a module of the top level) and the rooms its modules may import. Bottom up:
errors and the runtime; measures (arrays in, numbers out); networks, data sets, the config; rules; the run
file; training; run-level analysis, probes and figures; experiments; the command line. ``repanalysis``
itself is the package's ``__init__`` (``repanalysis.Recorder``)."""

EXCEPTIONS = {("repanalysis.config", "repanalysis.runfile.dtypes"): "the recording dtypes a config may name"}
"""Arrows between modules that ``MAY_IMPORT`` does not allow between their rooms, and why."""

PURE = tuple(sorted("repanalysis.measures" + ("" if path.stem == "__init__" else f".{path.stem}")
                    for path in (ROOT / "repanalysis" / "measures").glob("*.py")))
"""The measures on arrays (and the package that exports them): numpy and scipy only."""

PURE_MAY_IMPORT = PURE + ("repanalysis.errors", "repanalysis.runtime.memory")
"""All that the pure measures may import of the package."""

TORCH_INSIDE = {
    "repanalysis.measures._arrays": "reads a torch tensor handed to a measure as an array",
    "repanalysis.measures._linalg": "QR through torch's LAPACK binding, the fastest here (SVCCA's numbers)",
}
"""The pure modules that import torch inside a function, and why; importing them loads no torch."""

RULE_STATE_RESTORED = {"repanalysis.training.resume": {"steps_done"}}
"""The rule attributes a module outside ``repanalysis.rules`` may set: resume puts back a checkpoint's step."""


@cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the distribution: its dotted name -> (its file, whether it is a package)."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = setup.get("package-dir", {})
    out = {}
    for package in setup["packages"]:
        folder = ROOT / folders.get(package, package.replace(".", "/"))
        for path in sorted(folder.glob("*.py")):
            if path.stem == "__init__":
                out[package] = (path, True)
            else:
                out[f"{package}.{path.stem}"] = (path, False)
    return out


@cache
def trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(), str(path)) for name, (path, _) in modules().items()}


def _known(dotted: str) -> str | None:
    """The deepest module of the distribution that ``dotted`` names or lies in; None outside it."""
    while dotted:
        if dotted in modules():
            return dotted
        dotted = dotted.rpartition(".")[0]
    return None


def imports(name: str, top_level_only: bool = False) -> set[str]:
    """What module ``name`` imports: modules of the distribution by dotted name, others by their top-level
    name (``torch``, ``numpy``); ``top_level_only``: only the imports run when the module is loaded (not
    those inside functions or classes)."""
    is_package = modules()[name][1]
    tree = trees()[name]
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(_known(alias.name) or alias.name.partition(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = (name if is_package else name.rpartition(".")[0]).split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                out.add(_known(f"{base}.{alias.name}") or base.partition(".")[0])
    out.discard(name)
    return out


def graph(top_level_only: bool = False) -> dict[str, set[str]]:
    """The arrows among the distribution's modules. A module's imports from its own packages (``from . import
    __version__``) are not arrows: Python loads a module's packages before the module itself."""
    return {name: {m for m in imports(name, top_level_only) if m in modules() and not name.startswith(m + ".")}
            for name in modules()}


def cycles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(arrows[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(arrows):
        if v not in index:
            visit(v)
    return found


def loaded_with(name: str) -> set[str]:
    """Everything that importing ``name`` loads: the top-level imports, followed through the distribution."""
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m in modules():
            todo.extend(imports(m, top_level_only=True))
    return seen - {name}


def room(name: str) -> str | None:
    """The room of module ``name``: the longest key of ``MAY_IMPORT`` that it is or lies in (``repanalysis``
    only for the package itself); None for a module of the top level that is no room."""
    if name == "repanalysis":
        return name
    return max((r for r in MAY_IMPORT if r != "repanalysis" and (name == r or name.startswith(r + "."))),
               key=len, default=None)


def wrong_arrows(arrows: dict[str, set[str]]) -> list[str]:
    """The arrows from one room into another that ``MAY_IMPORT`` does not allow (and ``EXCEPTIONS`` do not
    name), as ``"a -> b"``."""
    return [f"{a} -> {b}" for a in sorted(arrows) for b in sorted(arrows[a])
            if room(a) != room(b) and room(b) not in MAY_IMPORT[room(a)] and (a, b) not in EXCEPTIONS]


def test_the_modules_are_found():
    names = modules()
    assert {"repanalysis.training.train", "repanalysis.rules.base", "repanalysis.training.pipeline.stages",
            "repanalysis.datasets", "repanalysis.measures.similarity"} <= set(names)
    assert imports("repanalysis.training.pipeline.stages") >= {"repanalysis.rules.base", "torch", "numpy"}
    assert {"repanalysis.measures", "repanalysis.measures.similarity", "repanalysis.measures.stats"} <= set(PURE)


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_wrong_arrows_are_found():
    assert wrong_arrows({"repanalysis.training.train": {"repanalysis.experiments.sweep", "repanalysis.rules.base"},
                         "repanalysis.measures.rdm": {"repanalysis.training.parts", "repanalysis.runtime.memory"},
                         "repanalysis.config": {"repanalysis.runfile.dtypes"}}) == [
        "repanalysis.measures.rdm -> repanalysis.training.parts",
        "repanalysis.training.train -> repanalysis.experiments.sweep"]


def test_every_module_is_in_a_room():
    """A new module goes into one of the rooms (``MAY_IMPORT``); the top level holds only the rooms,
    ``config``, ``errors`` and ``cli``."""
    homeless = sorted(name for name in modules() if room(name) is None)
    assert not homeless, f"modules in no room: {homeless}"


def test_the_rooms_are_layered():
    """The rooms' allowed imports have no circle, so the rooms stack in layers."""
    assert cycles({r: set(allowed) for r, allowed in MAY_IMPORT.items()}) == []


def test_imports_point_down_the_layers():
    """Every import from one room into another is one that ``MAY_IMPORT`` allows: training never imports the
    experiments, a measure nothing of training, the run file nothing of training."""
    wrong = wrong_arrows(graph())
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycle():
    """No module imports (at its top or inside a function) a module that imports it back, however far round."""
    assert cycles(graph()) == []


def test_the_training_loop_is_imported_only_to_train():
    """``training.train`` (the loop) is for the command line and the sweeps; the stages and the analyses that
    rebuild a network take what they share with it from ``training.parts``."""
    importers = sorted(name for name, arrows in graph().items() if "repanalysis.training.train" in arrows)
    assert importers == ["repanalysis.cli", "repanalysis.experiments.sweep"]


def test_pure_measures_import_no_torch_and_no_training():
    """Importing a measure loads no torch, no measure imports training code, and none imports torch
    anywhere but ``TORCH_INSIDE``."""
    for name in PURE:
        assert "torch" not in loaded_with(name), f"importing {name} loads torch"
        own = imports(name)
        assert "torch" not in own or name in TORCH_INSIDE, f"{name} imports torch"
        inside = sorted(m for m in own if m in modules() and m not in PURE_MAY_IMPORT)
        assert not inside, f"{name} imports {inside}; a pure measure may import only {PURE_MAY_IMPORT}"


def _names_a_rule(node: ast.expr) -> bool:
    """``rule``, ``self.rule``, ``stage.rule``...: an expression that, by its name, holds a rule."""
    return (isinstance(node, ast.Name) and node.id == "rule") or (isinstance(node, ast.Attribute)
                                                                   and node.attr == "rule")


def test_no_reach_into_a_rule():
    """Outside ``repanalysis.rules``, nothing reads or calls a rule's ``_private`` members, and nothing sets a
    rule's attributes (it changes its own state in its methods) except what ``RULE_STATE_RESTORED`` allows."""
    found = []
    for name, tree in trees().items():
        if name.startswith("repanalysis.rules"):
            continue
        allowed = RULE_STATE_RESTORED.get(name, set())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _names_a_rule(node.value)):
                continue
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            written = isinstance(node.ctx, (ast.Store, ast.Del)) and node.attr not in allowed
            if private or written:
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}" + (" set" if written else ""))
    assert not found, "reaches into a rule:\n" + "\n".join(found)


def test_both_training_loops_keep_their_record_with_one_bookkeeper():
    """The in-process loop and the stages' parent schedule, record and end a run through ``bookkeeping``,
    which imports neither loop, nor experiments, analyses or the command line."""
    arrows = graph()
    importers = sorted(name for name, out in arrows.items() if "repanalysis.training.bookkeeping" in out)
    assert importers == ["repanalysis.training.pipeline.launch", "repanalysis.training.train"]
    above = ("repanalysis.training.train", "repanalysis.training.pipeline", "repanalysis.experiments", "repanalysis.measures",
             "repanalysis.experiments.reproduce", "repanalysis.experiments.sweep", "repanalysis.cli")
    reached = sorted(m for m in loaded_with("repanalysis.training.bookkeeping") if m.startswith(above)
                     and m not in ("repanalysis.training.parts",))
    assert not reached, f"bookkeeping loads {reached}"
