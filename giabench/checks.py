"""Parameter checks that name the one rule a value breaks and the parameter (so a suite file can point at its line).

    at_least("attack ig", 1, iterations=iterations, restarts=restarts)
    -> ConfigError("attack ig: iterations must be >= 1, got 0", field="iterations")
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Param:
    """One documented parameter of an attack or a defense: a line of ``doc`` and the range its value must lie in
    (bounds, or ``choices``); ``rule`` says the range as errors and ``giabench describe`` do. A parameter without a
    range (a name, a flag, a seed) is checked for its type only (``giabench.registry.coerce``), and rules that tie
    parameters together stay in the component's ``check``."""

    doc: str
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    choices: tuple = ()

    @property
    def rule(self) -> str:
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        low = (f"{self.at_least:g}", "[") if self.at_least is not None else (f"{self.above:g}", "(") \
            if self.above is not None else None
        high = (f"{self.at_most:g}", "]") if self.at_most is not None else (f"{self.below:g}", ")") \
            if self.below is not None else None
        if low and high:
            return f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
        if low:
            return f"{'>=' if low[1] == '[' else '>'} {low[0]}"
        if high:
            return f"{'<=' if high[1] == ']' else '<'} {high[0]}"
        return ""

    def accepts(self, value) -> bool:
        if value is None or not self.rule:
            return True
        if self.choices:
            return value in self.choices
        return ((self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most) and (self.below is None or value < self.below))


def declared(where: str, parameters: dict[str, Param], values: dict) -> None:
    """Check each value against its declared range (``where``: "attack ig", "defense dp-sgd", for the message)."""
    for name, param in parameters.items():
        if name in values:
            require(where, name, values[name], param.accepts(values[name]), param.rule)
