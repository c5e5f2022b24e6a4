"""Every third-party module the installed package imports is a declared dependency (a fresh install would crash
there otherwise); optional ones are declared in an extra other than ``test``."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("giabench", "attacks", "defenses", "leaderboard")


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for name, reqs in project.get("optional-dependencies", {}).items() if name != "test" for r in reqs]
    return {_normal(re.split(r"[<>=!~\[; ]", r)[0]) for r in project["dependencies"] + extras}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_every_third_party_import_of_the_package_is_declared():
    declared, distributions = _declared(), packages_distributions()
    local = set(sys.stdlib_module_names) | {"giabench"}
    undeclared = {}
    for folder in PACKAGE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for module in set(_imports(path)) - local:
                provided_by = {_normal(d) for d in distributions.get(module, [module])}
                if not provided_by & declared:
                    undeclared.setdefault(module, path.relative_to(ROOT))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert "matplotlib" in declared  # the privacy-utility plot
