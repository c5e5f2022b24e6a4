"""Parameter checks that name the one rule a value breaks and the parameter (so a suite file can point at its line).

    at_least("attack ig", 1, iterations=iterations, restarts=restarts)
    -> ConfigError("attack ig: iterations must be >= 1, got 0", field="iterations")
"""

from __future__ import annotations

from giabench.errors import ConfigError


def require(where: str, name: str, value, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {name} must be {rule}, got {value!r}", field=name)


def at_least(where: str, low: float, **values) -> None:
    for name, value in values.items():
        require(where, name, value, value >= low, f">= {low}")


def positive(where: str, **values) -> None:
    for name, value in values.items():
        require(where, name, value, value > 0, "> 0")


def fraction(where: str, **values) -> None:
    """Each value in (0, 1]."""
    for name, value in values.items():
        require(where, name, value, 0 < value <= 1, "in (0, 1]")


def one_of(where: str, name: str, value, options) -> None:
    require(where, name, value, value in options, f"one of {', '.join(map(str, options))}")
