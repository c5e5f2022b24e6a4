"""The schema of a utility run (``giabench utility FILE`` or a suite's ``utility:`` section): every field checked,
names and parameters resolved against the registries, before any training starts."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from giabench import data, protocols
from giabench.errors import ConfigError
from giabench.models import MODES
from giabench.registry import defenses, models
from giabench.yamlfile import packaged, parse_yaml, read_spec

UTILITY_COLUMNS = ["defense", "defense_params", "dataset", "model", "protocol", "clients", "rounds", "batch",
                   "accuracy", "bytes_per_round", "wall_per_round_s", "epsilon", "delta", "adjacency", "seed",
                   "threads", "hardware"]


@dataclass
class UtilityConfig:
    dataset: str = "mnist-5k"
    model: dict = field(default_factory=lambda: {"name": "mlp", "width": 64})
    protocol: dict = field(default_factory=lambda: {"name": "fedavg"})  # the protocol's own defaults fill the rest
    clients: int = 4
    rounds: int = 20
    batch: int = 32
    server_lr: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    defenses: list = field(default_factory=lambda: [{"name": "none"}])
    data_root: str = ""


def load_config(spec: str | Path) -> UtilityConfig:
    """A utility YAML file by path, or one shipped in ``giabench/suites/utility`` by name (safe YAML, duplicate keys
    refused); unknown keys and bad values are named."""
    text, source = read_spec(str(spec), "suites/utility", "utility config")
    raw = parse_yaml(text, source)
    if raw is None:
        raise ConfigError(f"utility config {source}: is empty; give at least the defenses to price, e.g. "
                          "defenses: [none, {name: dp-sgd, noise_multiplier: 1.0}]")
    return config_from_mapping(raw, f"utility config {source}")


def packaged_configs() -> list[str]:
    return list(packaged("suites/utility"))


def description(spec: str) -> str:
    """The ``description`` line of a utility file (empty when it has none)."""
    raw = parse_yaml(*read_spec(spec, "suites/utility", "utility config"))
    return str(raw.get("description", "")) if isinstance(raw, dict) else ""


def config_from_mapping(raw, where: str) -> UtilityConfig:
    """A ``UtilityConfig`` from a mapping (a utility file, or a suite's ``utility:`` section), every value checked."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    known = UtilityConfig.__dataclass_fields__
    unknown = sorted(set(raw) - set(known) - {"name", "description"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(known)}")
    cfg = UtilityConfig(**{k: v for k, v in raw.items() if k in known})
    for key in ("model", "protocol"):
        value = getattr(cfg, key)
        value = {"name": value} if isinstance(value, str) else value
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise ConfigError(f"{where}: {key} must be a name or a mapping with 'name', got {value!r}")
        setattr(cfg, key, dict(value))
    if not isinstance(cfg.defenses, list) or not cfg.defenses:
        raise ConfigError(f"{where}: defenses must be a non-empty list of defense names or mappings")
    cfg.defenses = [{"name": d} if isinstance(d, str) else d for d in cfg.defenses]
    for key in ("clients", "rounds", "batch", "seed"):
        value, least = getattr(cfg, key), 0 if key == "seed" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{where}: {key} must be a whole number >= {least}, got {value!r}")
    for key, ok, rule in (("server_lr", lambda v: v > 0, "> 0"), ("test_fraction", lambda v: 0 < v < 1, "in (0, 1)")):
        value = getattr(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{where}: {key} must be a number {rule}, got {value!r}")
    if not isinstance(cfg.dataset, str) or not isinstance(cfg.data_root, str):
        raise ConfigError(f"{where}: dataset and data_root must be strings")
    _check_components(cfg, where)
    return cfg


def _check_components(cfg: UtilityConfig, where: str) -> None:
    """Names and parameters of the dataset, model, protocol and every defense, against their registries."""
    data.resolve_params(cfg.dataset, {}, f"{where}: dataset {cfg.dataset}")
    model = {k: v for k, v in cfg.model.items() if k not in ("name", "state", "mode")}
    models.resolve(cfg.model["name"], model, f"{where}: model {cfg.model['name']}")
    if cfg.model.get("mode", "eval") not in MODES:
        raise ConfigError(f"{where}: model mode must be one of {', '.join(MODES)}, got {cfg.model['mode']!r}")
    if cfg.model.get("state", "untrained") != "untrained":
        raise ConfigError(f"{where}: the utility run trains the model from its seeded initialization; drop model "
                          "state")
    protocols.resolve_params(cfg.protocol["name"], {k: v for k, v in cfg.protocol.items() if k != "name"},
                             f"{where}: protocol {cfg.protocol['name']}")
    for d in cfg.defenses:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ConfigError(f"{where}: every entry of defenses needs a name, got {d!r}")
        params = defenses.resolve(d["name"], {k: v for k, v in d.items() if k != "name"}, f"{where}: defense")
        defenses.get(d["name"])(None, **params)  # constructors check their values before touching the protocol


def fingerprint(cfg: UtilityConfig) -> str:
    """The configuration as canonical JSON: a utility run is reused only for exactly this configuration."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)
