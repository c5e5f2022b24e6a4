"""The import rule: every module of the package sits on one floor and imports only from its floor and those below
(function-level imports included), and no modules import each other in a loop.

    commands     cli, commands, runner, executors, audit, audit_report, utility,     (anything below)
                 integrations.*
    leaderboard  giabench.leaderboard.*                                               (core)
    components   giabench.attacks.*, giabench.defenses.*                              (core; each its own package)
    core         registry, contracts, data, models, protocols, metrics, store, ...   (core only)
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"giabench": ROOT / "giabench", "giabench.attacks": ROOT / "attacks",
           "giabench.defenses": ROOT / "defenses", "giabench.leaderboard": ROOT / "leaderboard"}
COMMANDS = {"giabench.cli", "giabench.__main__", "giabench.commands", "giabench.runner", "giabench.executors",
            "giabench.audit", "giabench.audit_report", "giabench.utility", "giabench.integrations",
            "giabench.integrations.flower", "giabench.integrations.recorder"}
CORE = {"giabench", "giabench.errors", "giabench.checks", "giabench.registry", "giabench.threats", "giabench.numerics",
        "giabench.data", "giabench.models", "giabench.protocols", "giabench.metrics", "giabench.lpips",
        "giabench.store", "giabench.contracts", "giabench.federation", "giabench.privacy", "giabench.images",
        "giabench.yamlfile", "giabench.suite", "giabench.utility_config"}
ALLOWED = {"core": {"core"}, "attacks": {"core", "attacks"}, "defenses": {"core", "defenses"},
           "leaderboard": {"core", "leaderboard"}, "commands": {"core", "attacks", "defenses", "leaderboard",
                                                                 "commands"}}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def floor(module: str) -> str:
    if module in COMMANDS:
        return "commands"
    if module in CORE:
        return "core"
    for package in ("attacks", "defenses", "leaderboard"):
        if module == f"giabench.{package}" or module.startswith(f"giabench.{package}."):
            return package
    raise AssertionError(f"{module} sits on no floor: add it to tests/test_floors.py and the README's Layout")


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


def test_every_module_sits_on_a_floor(graph):
    for module in graph:
        floor(module)


def test_no_module_imports_a_floor_above_its_own(graph):
    upward = [f"{module} ({floor(module)}) imports {target} ({floor(target)})" for module, targets in graph.items()
              for target in sorted(targets) if floor(target) not in ALLOWED[floor(module)]]
    assert not upward, "\n".join(upward)


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


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check itself: a core module that imports an attack is reported."""
    path = tmp_path / "models.py"
    path.write_text("def f():\n    from giabench.attacks.analytic import FCInvert\n")
    found = imports(path, "giabench.models", {"giabench.attacks.analytic", "giabench.attacks"})
    assert "giabench.attacks.analytic" in found
    assert floor("giabench.attacks.analytic") not in ALLOWED[floor("giabench.models")]
