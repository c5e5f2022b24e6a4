"""One registry per kind of component, filled by decorators and by entry points.

    @attack("ig")
    class InvertingGradients(Attack): ...

Every component arrives through an entry point: a package declares one in the group ``giabench.attacks`` (likewise
``giabench.defenses``, ``giabench.models``, ``giabench.datasets``, ``giabench.protocols``) whose target module
registers its classes on import. giabench's own modules are declared the same way in its ``pyproject.toml``, so a
third-party attack or defense is found, listed and run exactly as a built-in one.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from importlib import metadata
from typing import Any

from giabench.errors import ConfigError, GiabenchError

KINDS = ("attacks", "defenses", "models", "datasets", "protocols")


class Registry:
    """Maps a public name to a constructor; knows the constructor's parameters and their defaults."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind[:-1]} {name!r} is registered twice")
            self._items[name] = obj
            obj.registered_name = name
            return obj

        return decorate

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for entry in metadata.entry_points(group=f"giabench.{self.kind}"):
            entry.load()
        if not self._items:
            raise GiabenchError(f"no {self.kind} are registered: giabench's entry points are missing (install it "
                                "with pip install -e . rather than running it from the source folder)")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        if name not in self._items:
            known = ", ".join(self.names())
            raise ConfigError(f"unknown {self.kind[:-1]} {name!r}; known: {known}")
        return self._items[name]

    def defaults(self, name: str) -> dict[str, Any]:
        """Keyword parameters of the constructor with their defaults (the tunable knobs of a component)."""
        obj = self.get(name)
        target = obj.__init__ if inspect.isclass(obj) else obj
        params = {}
        for p in inspect.signature(target).parameters.values():
            if p.kind == p.KEYWORD_ONLY:
                params[p.name] = p.default
        return params

    def resolve(self, name: str, params: dict[str, Any], where: str) -> dict[str, Any]:
        """Fill defaults and reject unknown or mistyped parameters; ``where`` names the field for errors."""
        defaults = self.defaults(name)
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            known = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"{where}: unknown parameter {unknown[0]!r}; known: {known}", field=unknown[0])
        resolved = dict(defaults)
        for key, value in params.items():
            default = defaults[key]
            if default is inspect.Parameter.empty:
                resolved[key] = value
                continue
            try:
                resolved[key] = coerce(value, default, f"{where}.{key}")
            except ConfigError as exc:
                raise ConfigError(str(exc), field=key) from None
        missing = [k for k, v in resolved.items() if v is inspect.Parameter.empty]
        if missing:
            raise ConfigError(f"{where}: needs parameter {missing[0]!r}")
        return resolved


def coerce(value: Any, default: Any, where: str) -> Any:
    """Check ``value`` against the type of ``default``; ints are accepted where floats are expected."""
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}")
    return value


attacks = Registry("attacks")
defenses = Registry("defenses")
models = Registry("models")
datasets = Registry("datasets")
protocols = Registry("protocols")

attack = attacks.register
defense = defenses.register
model = models.register
dataset = datasets.register
protocol = protocols.register


def registry(kind: str) -> Registry:
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return {"attacks": attacks, "defenses": defenses, "models": models, "datasets": datasets,
            "protocols": protocols}[kind]
