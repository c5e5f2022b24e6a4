"""The import direction: every module sits in one layer, read off its folder, and imports only from its layer and
those below (function-level imports included); no modules import each other in a loop.

    app          giabench.app.*: cli, commands, describe, audit, audit_report,        (anything below)
                 integrations.*; and giabench.__main__ (python -m giabench)
    leaderboard  giabench.leaderboard.* (leaderboard/)                               (core)
    components   giabench.attacks.* (attacks/), giabench.defenses.* (defenses/)      (core; each its own package)
    core         every other module of giabench/: registry, contracts, components,   (core only)
                 suite, runner, executors, store, data, models, protocols, ...
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"giabench": ROOT / "giabench", "giabench.attacks": ROOT / "attacks",
           "giabench.defenses": ROOT / "defenses", "giabench.leaderboard": ROOT / "leaderboard"}
LAYERS = ("app", "attacks", "defenses", "leaderboard")  # the packages giabench.<layer>; the rest is core
ALLOWED = {"core": {"core"}, "attacks": {"core", "attacks"}, "defenses": {"core", "defenses"},
           "leaderboard": {"core", "leaderboard"}, "app": {"core", "attacks", "defenses", "leaderboard", "app"}}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def layer(module: str) -> str:
    if module == "giabench.__main__":  # python -m giabench: the command line's entry, imported by nothing
        return "app"
    for package in LAYERS:
        if module == f"giabench.{package}" or module.startswith(f"giabench.{package}."):
            return package
    return "core"


def imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file (``from giabench import x`` counts x)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                  else []))
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in out if name in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, name, set(found)) - {name} for name, path in found.items()}


def test_the_front_end_is_a_package_of_its_own(graph):
    """The commands live in giabench/app/, not beside the core: every module that parses arguments, runs a command
    or adapts an FL stack is in the app layer."""
    assert {"giabench.app.cli", "giabench.app.commands", "giabench.app.audit", "giabench.app.audit_report",
            "giabench.app.describe", "giabench.app.integrations.recorder"} <= set(graph)
    for module in graph:
        if layer(module) == "core":
            assert module.rpartition(".")[2] not in {"cli", "commands", "audit", "audit_report", "describe"}, module


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = [f"{module} ({layer(module)}) imports {target} ({layer(target)})" for module, targets in graph.items()
              for target in sorted(targets) if layer(target) not in ALLOWED[layer(module)]]
    assert not upward, "\n".join(upward)


def test_the_front_end_imports_what_it_drives_at_module_level():
    """No import in the app dodges the direction inside a function: it may import anything below at the top."""
    late = []
    for name, path in modules().items():
        if layer(name) != "app":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = set(map(id, tree.body))
        late += [f"{name}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                 and id(node) not in top and _giabench(node)]
    assert not late, late


def _giabench(node) -> bool:
    names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    return any(name == "giabench" or name.startswith("giabench.") for name in names)


def test_no_import_loops(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    loops = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if module.startswith(f"{target}."):
                continue  # a module importing its own package's __init__ (which may import it in turn)
            if state.get(target) == 1:
                loops.append(" -> ".join(path[path.index(target):] + [target]))
            elif not state.get(target):
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [module])
    assert not loops, "\n".join(loops)


@pytest.mark.parametrize("target", ["giabench.attacks.analytic", "giabench.app.commands",
                                    "giabench.leaderboard.report"])
def test_the_rule_catches_an_upward_import(tmp_path, target):
    """The check itself: a core module that imports an attack, a command or the leaderboard, even inside a
    function, is reported."""
    path = tmp_path / "models.py"
    module, _, name = target.rpartition(".")
    path.write_text(f"def f():\n    from {module} import {name}\n")
    found = imports(path, "giabench.models", {target, module})
    assert target in found
    assert layer(target) not in ALLOWED[layer("giabench.models")]
