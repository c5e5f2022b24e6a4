"""A cell's components as typed values: a registered ``name`` with its ``params``, resolved and validated once.

    attack = components.attack("ig", {"iterations": 500})        # defaults filled, types and ranges checked
    attacker = attack.build()                                      # InvertingGradients(iterations=500, ...)

A cell holds five components (dataset, model, protocol, defense, attack). Resolving one fills its registry defaults,
types every value (``registry.coerce``) and checks it (its ``check``: declared ranges and the rules that tie
parameters, or a defense's protocol and batch size together), so whoever builds it afterwards (the runner, once per
cell) passes parameters that need no second check. ``Component.config`` is the mapping a cell's identity hashes and
the store records: ``{"name": ..., **params}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from giabench import data, protocols
from giabench.errors import ConfigError
from giabench.models import MODES, check_state
from giabench.models import build as build_classifier
from giabench.registry import Registry, attacks, datasets, defenses, models
from giabench.registry import protocols as protocol_registry

KINDS = ("dataset", "model", "protocol", "defense", "attack")
REGISTRIES: dict[str, Registry] = {"dataset": datasets, "model": models, "protocol": protocol_registry,
                                   "defense": defenses, "attack": attacks}
MODEL_SETTINGS = ("state", "mode")  # a model component's parameters that are not the architecture's


@dataclass(frozen=True)
class Component:
    """A registered ``name`` of ``kind`` with its parameters (``resolve`` makes validated ones)."""

    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict:
        return {"name": self.name, **self.params}

    @property
    def factory(self):
        """The registered class or function."""
        return REGISTRIES[self.kind].get(self.name)

    def build(self, *args):
        """The component, its parameters passed as keywords after ``args`` (a protocol takes the model, a defense
        the protocol)."""
        return self.factory(*args, **self.params)

    def without(self, *keys: str) -> dict:
        """The parameters less ``keys`` (a model's architecture parameters: ``without(*MODEL_SETTINGS)``)."""
        return {k: v for k, v in self.params.items() if k not in keys}


def build_model(model: Component, imageset, seed: int, state: str | None = None):
    """The classifier of ``model``'s architecture for ``imageset`` (a ``giabench.data.ImageSet``) in the model's
    state (or ``state``) and mode, its weights drawn from ``seed``."""
    net = build_classifier(model.name, model.without(*MODEL_SETTINGS), imageset, state or model.params["state"], seed)
    return net.train(model.params["mode"] == "train")


def dataset(name: str, params: dict) -> Component:
    return Component("dataset", name, data.resolve_params(name, dict(params), f"dataset {name}"))


def model(name: str, params: dict) -> Component:
    """An architecture with its ``state`` (untrained, trained:N, checkpoint:PATH) and ``mode`` (eval, train)."""
    params = dict(params)
    state, mode = params.pop("state", "untrained"), params.pop("mode", "eval")
    check_state(state, f"model {name}")
    if mode not in MODES:
        raise ConfigError(f"model {name}: mode must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    return Component("model", name, {"state": state, "mode": mode, **models.resolve(name, params, f"model {name}")})


def protocol(name: str, params: dict) -> Component:
    return Component("protocol", name, protocols.resolve_params(name, dict(params), f"protocol {name}"))


def defense(name: str, params: dict, protocol: Component, batch_size: int) -> Component:
    """A defense for clients of ``batch_size`` images under ``protocol``: its own ``check`` refuses values out of
    range and a protocol or batch size it cannot serve."""
    resolved = defenses.resolve(name, dict(params), f"defense {name}")
    defenses.get(name).check(resolved, protocol, batch_size)
    return Component("defense", name, resolved)


def attack(name: str, params: dict) -> Component:
    resolved = attacks.resolve(name, dict(params), f"attack {name}")
    attacks.get(name).check(resolved)
    return Component("attack", name, resolved)


def swept(config) -> list:
    """A defense entry with ``sweep: true`` as one entry per point of the defense's strength axis
    (``Client.strength``), the point's values over the entry's; any other entry as itself."""
    if not isinstance(config, dict) or "sweep" not in config:
        return [config]
    name, sweep = config.get("name"), config["sweep"]
    if sweep is not True:
        raise ConfigError(f"defense {name}: sweep must be true (every point of its strength axis), got {sweep!r}",
                          field="sweep")
    axis = defenses.get(name).strength if isinstance(name, str) else None
    if axis is None:
        raise ConfigError(f"defense {name}: it declares no strength axis to sweep", field="sweep")
    return [{**{k: v for k, v in config.items() if k != "sweep"}, **point} for point in axis.points]


def from_config(kind: str, config: dict, **context) -> Component:
    """A component from a mapping with ``name`` (a suite entry, a declaration); ``context``: a defense's
    ``protocol`` and ``batch_size``."""
    name = config.get("name") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise ConfigError(f"{kind}.name must be a string, got {name!r}")
    params = {k: v for k, v in config.items() if k != "name"}
    resolvers = {"dataset": dataset, "model": model, "protocol": protocol, "defense": defense, "attack": attack}
    return resolvers[kind](name, params, **context)
