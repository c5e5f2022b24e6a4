"""An attack's search space: the hyperparameters ``giabench tune`` may move, each with the range it searches.

    @classmethod
    def search_space(cls, shape):
        return {"lr": Range(1e-3, 1.0, log=True), "tv": Range(1e-6, 1.0, log=True)}

Only parameters that leave the attack's budget unchanged belong here (step sizes, prior weights, distances), so a tuned
attack is compared with its default at equal iterations. ``check`` refuses a space that names an undeclared
parameter, or whose range leaves the parameter's declared one.
"""

from __future__ import annotations

from dataclasses import dataclass

from giabench.checks import Param
from giabench.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """A number in [low, high]; ``log``: searched on a log scale; ``integer``: whole numbers only."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __post_init__(self):
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ConfigError(f"a search range needs low < high (and low > 0 on a log scale), got "
                              f"[{self.low}, {self.high}]")

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}]{' log' if self.log else ''}{' integer' if self.integer else ''}"


@dataclass(frozen=True)
class Choice:
    """One of ``options``."""

    options: tuple

    def describe(self) -> str:
        return "{" + ", ".join(map(str, self.options)) + "}"


Dimension = Range | Choice


def check(where: str, space: dict[str, Dimension], parameters: dict[str, Param]) -> None:
    """Refuse a search space naming a parameter the attack does not declare, or searching outside its range."""
    for name, dimension in space.items():
        if name not in parameters:
            raise ConfigError(f"{where}: the search space names {name!r}, which is not a parameter "
                              f"(known: {', '.join(parameters)})")
        param = parameters[name]
        values = dimension.options if isinstance(dimension, Choice) else (dimension.low, dimension.high)
        for value in values:
            if param.choices and value not in param.choices:
                raise ConfigError(f"{where}: the search space of {name} holds {value!r}, outside {param.rule}")
            if not param.choices and not _within(param, value):
                raise ConfigError(f"{where}: the search range of {name} reaches {value!r}, outside {param.rule}")


def _within(param: Param, value) -> bool:
    return ((param.at_least is None or value >= param.at_least) and (param.above is None or value > param.above)
            and (param.at_most is None or value <= param.at_most) and (param.below is None or value < param.below))


def distribution(dimension: Dimension):
    """The Optuna distribution of ``dimension``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dimension, Choice):
        return CategoricalDistribution(list(dimension.options))
    if dimension.integer:
        return IntDistribution(int(dimension.low), int(dimension.high), log=dimension.log)
    return FloatDistribution(dimension.low, dimension.high, log=dimension.log)
