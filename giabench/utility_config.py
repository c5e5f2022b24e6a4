"""The schema of a utility run (``giabench utility FILE`` or a suite's ``utility:`` section): every field checked,
names and parameters resolved against the registries, before any training starts."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from giabench import components
from giabench.components import Component
from giabench.errors import ConfigError
from giabench.yamlfile import packaged, parse_yaml, read_spec

UTILITY_COLUMNS = ["defense", "defense_params", "dataset", "model", "protocol", "clients", "rounds", "batch",
                   "accuracy", "bytes_per_round", "wall_per_round_s", "epsilon", "delta", "adjacency", "seed",
                   "threads", "hardware"]
#: a run that tunes its training configuration adds: the chosen values, their validation accuracy, how many were tried
TUNED_COLUMNS = ["tuned", "validation_accuracy", "variants"]


@dataclass
class UtilityConfig:
    """A validated utility run (``config_from_mapping`` makes one): the model, protocol and defenses are resolved
    components, each defense checked against the protocol and the clients' ``batch``."""

    dataset: Component
    model: Component
    protocol: Component
    defenses: list[Component]
    clients: int = 4
    rounds: int = 20
    batch: int = 32
    server_lr: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    data_root: str = ""
    partition: dict = dataclasses.field(default_factory=lambda: {"name": "iid"})
    #: training hyperparameters chosen per defense setting on the validation split: server_lr, lr (the protocol's
    #: local step) or a defense parameter (clip ...), each a list of values; empty: train as configured
    tune: dict = dataclasses.field(default_factory=dict)
    validation: float = 0.1  # the share of the training split held out to choose them (when tune is given)


#: what a field left out is (``defenses`` left out: the undefended reference alone)
DEFAULTS = {"dataset": "mnist-5k", "model": {"name": "mlp", "width": 64}, "protocol": {"name": "fedavg"},
            "defenses": [{"name": "none"}], "partition": {"name": "iid"}, "tune": {},
            **{f.name: f.default for f in dataclasses.fields(UtilityConfig) if f.default is not dataclasses.MISSING}}
#: how the training split is dealt to the clients: ``iid`` (equal random shards, one held-out test split) or
#: ``label-skew`` (HyperFL's: each client's ``train`` images, ``share`` of them from ``classes`` consecutive
#: classes and the rest from all classes alike, and a local test set of ``test`` images with the same label mix)
PARTITIONS = {"iid": {}, "label-skew": {"classes": 3, "share": 0.8, "train": 600, "test": 600}}
KNOWN = [f.name for f in dataclasses.fields(UtilityConfig)]
EMPTY = "is empty; give at least the defenses to price, e.g. defenses: [none, {name: dp-sgd, noise_multiplier: 1.0}]"


def load_config(spec: str | Path) -> UtilityConfig:
    """A utility YAML file by path, or one shipped in ``giabench/suites/utility`` by name (safe YAML, duplicate keys
    refused); unknown keys and bad values are named; an empty file is refused as an empty mapping is."""
    text, source = read_spec(str(spec), "suites/utility", "utility config")
    raw = parse_yaml(text, source)
    return config_from_mapping({} if raw is None else raw, f"utility config {source}")


def packaged_configs() -> list[str]:
    return list(packaged("suites/utility"))


def description(spec: str) -> str:
    """The ``description`` line of a utility file (empty when it has none)."""
    raw = parse_yaml(*read_spec(spec, "suites/utility", "utility config"))
    return str(raw.get("description", "")) if isinstance(raw, dict) else ""


def config_from_mapping(raw, where: str) -> UtilityConfig:
    """A ``UtilityConfig`` from a mapping (a utility file, or a suite's ``utility:`` section), every value checked
    and every component resolved once; an empty mapping is refused (it would price nothing but the reference)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    if not raw:
        raise ConfigError(f"{where}: {EMPTY}")
    unknown = sorted(set(raw) - set(KNOWN) - {"name", "description"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(KNOWN)}")
    values = {**DEFAULTS, **{k: v for k, v in raw.items() if k in KNOWN}}
    for key in ("dataset", "model", "protocol"):
        value = values[key]
        value = {"name": value} if isinstance(value, str) else value
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise ConfigError(f"{where}: {key} must be a name or a mapping with 'name', got {value!r}")
        values[key] = dict(value)
    for key in ("clients", "rounds", "batch", "seed"):
        value, least = values[key], 0 if key == "seed" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{where}: {key} must be a whole number >= {least}, got {value!r}")
    for key, ok, rule in (("server_lr", lambda v: v > 0, "> 0"), ("test_fraction", lambda v: 0 < v < 1, "in (0, 1)"),
                          ("validation", lambda v: 0 < v < 1, "in (0, 1)")):
        value = values[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{where}: {key} must be a number {rule}, got {value!r}")
    if not isinstance(values["data_root"], str):
        raise ConfigError(f"{where}: data_root must be a string")
    values["partition"] = _partition(values["partition"], where)
    values["tune"] = _tune(values["tune"], where)
    if not isinstance(values["defenses"], list) or not values["defenses"]:
        raise ConfigError(f"{where}: defenses must be a non-empty list of defense names or mappings")
    return UtilityConfig(**{**values, **_components(values, where)})


def _partition(raw, where: str) -> dict:
    """A partition (a name, or a mapping with ``name`` and its fields) with its defaults filled and checked."""
    raw = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, dict) or raw.get("name") not in PARTITIONS:
        raise ConfigError(f"{where}: partition must be one of {', '.join(PARTITIONS)} (a name or a mapping with "
                          f"name), got {raw!r}", field="partition")
    fields = PARTITIONS[raw["name"]]
    unknown = sorted(set(raw) - set(fields) - {"name"})
    if unknown:
        raise ConfigError(f"{where}: partition {raw['name']}: unknown field {unknown[0]!r}"
                          + (f"; known: {', '.join(fields)}" if fields else ""), field="partition")
    values = {"name": raw["name"], **fields, **raw}
    for key in ("classes", "train", "test"):
        if key in fields and (not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1):
            raise ConfigError(f"{where}: partition {key} must be a whole number >= 1, got {values[key]!r}",
                              field="partition")
    if "share" in fields and (isinstance(values["share"], bool) or not isinstance(values["share"], (int, float))
                              or not 0 <= values["share"] <= 1):
        raise ConfigError(f"{where}: partition share must be a number in [0, 1], got {values['share']!r}",
                          field="partition")
    return values


def _tune(raw, where: str) -> dict:
    """``tune``: a mapping of hyperparameter names to non-empty lists of numbers (each value checked where it is
    applied: a defense's own range, a protocol's)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: tune must map hyperparameters (server_lr, lr, clip ...) to lists of values, "
                          f"got {raw!r}", field="tune")
    for key, values in raw.items():
        if not isinstance(values, list) or not values or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ConfigError(f"{where}: tune {key} must be a non-empty list of numbers, got {values!r}",
                              field="tune")
        if key == "server_lr" and min(values) <= 0:
            raise ConfigError(f"{where}: tune server_lr values must be > 0, got {values!r}", field="tune")
    return dict(raw)


def _components(values: dict, where: str) -> dict:
    """The dataset, the model, protocol and every defense resolved against their registries."""
    try:
        dataset = components.from_config("dataset", values["dataset"])
        model = components.from_config("model", values["model"])
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}", field=exc.field) from None
    if model.params["state"] != "untrained":
        raise ConfigError(f"{where}: the utility run trains the model from its seeded initialization; drop model "
                          "state")
    try:
        protocol = components.from_config("protocol", values["protocol"])
        defenses = []
        for d in (point for entry in values["defenses"] for point in components.swept(entry)):
            d = {"name": d} if isinstance(d, str) else d
            if not isinstance(d, dict) or not isinstance(d.get("name"), str):
                raise ConfigError(f"every entry of defenses needs a name, got {d!r}")
            resolved = components.from_config("defense", d, protocol=protocol, batch_size=values["batch"])
            if resolved not in defenses:  # a swept point the list also names is trained once
                defenses.append(resolved)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}", field=exc.field) from None
    return {"dataset": dataset, "model": model, "protocol": protocol, "defenses": defenses}


def fingerprint(cfg: UtilityConfig) -> str:
    """The configuration as canonical JSON: a utility run is reused only for exactly this configuration."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)
