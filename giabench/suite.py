"""Suites: YAML grids of cells, validated with errors that name the field and the file line.

    name: default
    description: one line
    defaults:                      # every cell starts from these
      dataset: cifar10-sample
      model: {name: convnet, width: 16, state: untrained}
      attack: {name: ig, iterations: 500}
      threat_model: B              # optional: A-H (giabench.threats); default the weakest that the attack needs
    grid:                          # cartesian product of the lists; a list of such mappings is their union
      defense: [none, {name: dp-sgd, noise_multiplier: 1.0}]
      seed: [0, 1]
    utility:                       # optional: a short federated training under each defense (giabench.utility),
      dataset: mnist-5k            # run after the cells; the report joins its accuracy on dataset and model
      defenses: [{name: dp-sgd, noise_multiplier: 1.0}]
    tuned: runs/default-tune       # optional: a giabench tune folder; every cell whose setting it tuned is run
                                   # twice, with the default and with the tuned attack parameters

A component (dataset, model, protocol, defense, attack) is a name or a mapping with ``name`` and parameters; a grid
entry without ``name`` updates the default component's parameters. Expanding the grid resolves and validates every
component once (``giabench.components``: defaults, types, ranges, the defense against its protocol and batch size),
so a ``Cell`` holds typed components the runner builds without a second check. A cell's identity is a hash of its
resolved config and the package version. Every error names the file and the line of the offending value (a
parameter's own line where it has one); duplicate keys are refused. The suite's ``name`` becomes a folder name only
as a slug.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from giabench import __version__, components, data, threats, tuned
from giabench.components import Component
from giabench.errors import ConfigError
from giabench.utility_config import config_from_mapping
from giabench.yamlfile import Located, packaged, parse_yaml, read_spec

COMPONENTS = components.KINDS
SCALARS = {"batch_size": int, "seed": int, "selection": str, "threat_model": str}
CELL_KEYS = COMPONENTS + tuple(SCALARS)
BASE = {"dataset": {"name": "cifar10-sample"}, "model": {"name": "convnet", "state": "untrained"},
        "protocol": {"name": "fedsgd"}, "defense": {"name": "none"}, "attack": {"name": "ig"},
        "batch_size": 1, "seed": 0, "selection": "random", "threat_model": ""}


@dataclass(frozen=True)
class Cell:
    """One experiment: five resolved components and the client's batch size, seed, batch selection and threat
    model. ``context`` adds identity fields of a cell made outside a suite (the Flower recorder's round and client);
    ``where`` maps a field to the ``file:line`` it came from (for errors)."""

    dataset: Component
    model: Component
    protocol: Component
    defense: Component
    attack: Component
    batch_size: int
    seed: int
    selection: str
    threat_model: str
    context: dict = field(default_factory=dict)
    where: dict = field(default_factory=dict, compare=False)

    @cached_property
    def config(self) -> dict:
        """The resolved configuration, as the cell's id hashes it and the store records it."""
        return {**{c.kind: c.config for c in self.components}, "batch_size": self.batch_size, "seed": self.seed,
                "selection": self.selection, "threat_model": self.threat_model, **self.context}

    @cached_property
    def id(self) -> str:
        return cell_id(self.config)

    @property
    def setting(self) -> str:
        """The id of the cell's setting (``setting_id``)."""
        return setting_id(self.config)

    @property
    def components(self) -> tuple[Component, ...]:
        return self.dataset, self.model, self.protocol, self.defense, self.attack

    def at(self, key: str, parameter: str | None = None) -> str:
        """Where ``key``'s value (or its ``parameter``) was written: ``file:line``, else the suite's source."""
        return (self.where.get(f"{key}.{parameter}") or self.where.get(key) or self.where.get("", "<suite>"))

    @property
    def label(self) -> str:
        return (f"{self.attack.name} vs {self.defense.name} on {self.model.name}/{self.dataset.name} "
                f"B={self.batch_size} seed={self.seed}")


@dataclass
class Suite:
    name: str
    description: str
    cells: list[Cell]
    source: str
    utility: Any = None  # a giabench.utility_config.UtilityConfig, or None
    tuned: dict | None = None  # the record of the tuning run whose parameters the suite runs beside the defaults

    @property
    def slug(self) -> str:
        """The name as a safe folder name: lower case, runs of other characters than a-z 0-9 . _ - become '-'."""
        return re.sub(r"[^a-z0-9._-]+", "-", self.name.lower()).strip("-.") or "suite"


def cell_id(config: dict) -> str:
    blob = json.dumps({"config": config, "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def setting_id(config: dict) -> str:
    """The id of a cell's setting: its resolved config without the seed (a tuning run tunes per setting)."""
    return cell_id({k: v for k, v in config.items() if k != "seed"})


def packaged_suites() -> list[str]:
    return list(packaged("suites"))


def load(spec: str) -> Suite:
    """Read a packaged suite by name or a YAML file by path, validate it and expand its grid into cells."""
    text, source = read_spec(spec, "suites", "suite file")
    doc = parse_yaml(text, source)
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: a suite is a mapping with keys name, description, defaults, grid")
    return expand(doc, source)


def _line(mapping: Any, key: str) -> str:
    lines = getattr(mapping, "lines", {})
    return f":{lines[key]}" if key in lines else (f":{lines['__self__']}" if "__self__" in lines else "")


def expand(doc: dict, source: str = "<suite>") -> Suite:
    unknown = sorted(set(doc) - {"name", "description", "defaults", "grid", "utility", "tuned"})
    if unknown:
        raise ConfigError(f"{source}{_line(doc, unknown[0])}: unknown suite key {unknown[0]!r}; "
                          "known: name, description, defaults, grid, utility, tuned")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}{_line(doc, 'defaults')}: defaults must be a mapping of cell fields")
    base = {key: _merge(BASE[key], value, key, source) for key, value in BASE.items()}
    default_wheres = {key: f"{source}{_line(defaults, key)}" for key in defaults}
    for key, value in defaults.items():
        base[key] = _merge(BASE.get(key), value, key, default_wheres[key])
    grids = doc.get("grid") or [{}]
    grids = grids if isinstance(grids, list) else [grids]
    cells, seen, needs = [], set(), {}
    for grid in grids:
        if not isinstance(grid, dict):
            raise ConfigError(f"{source}: each grid must be a mapping of field -> list of values")
        axes = []
        for key, values in grid.items():
            where = f"{source}{_line(grid, key)}"
            values = values if isinstance(values, list) else [values]
            if key == "defense":
                values = _swept(values, where)
            if not values:
                raise ConfigError(f"{where}: grid field {key!r} has no values")
            axes.append([(key, value, where) for value in values])
        for combo in itertools.product(*axes):
            raw = dict(base)
            for key, value, where in combo:
                raw[key] = _merge(base.get(key), value, key, where)
            wheres = {**default_wheres, **{key: where for key, _, where in combo}}
            parameters = {f"{key}.{p}": f"{source}:{line}" for key in COMPONENTS
                          for p, line in getattr(raw[key], "lines", {}).items() if p != "__self__"}
            cell = resolve(raw, wheres, source, needs, {"": source, **wheres, **parameters})
            if cell.id not in seen:
                seen.add(cell.id)
                cells.append(cell)
    utility = None
    if doc.get("utility") is not None:
        utility = config_from_mapping(doc["utility"], f"{source}{_line(doc, 'utility')}: utility")
    loaded = Suite(str(doc.get("name", Path(source).stem)), str(doc.get("description", "")), cells, source, utility)
    if doc.get("tuned") is not None:
        where = f"{source}{_line(doc, 'tuned')}"
        if not isinstance(doc["tuned"], str) or not doc["tuned"].strip():
            raise ConfigError(f"{where}: tuned must name a giabench tune folder, got {doc['tuned']!r}")
        folder = Path(doc["tuned"])
        if not folder.is_absolute() and Path(source).is_file():
            folder = Path(source).parent / folder
        try:
            record = tuned.load(folder)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        loaded = with_tuned(loaded, record, where)
    return loaded


def with_tuned(loaded: Suite, record: dict, where: str = "") -> Suite:
    """``loaded`` with, after each cell whose setting ``record`` (a ``giabench.tuned`` record) tuned, its twin run
    with the tuned attack parameters (the same private batch and seed: the pair compares the parameters alone)."""
    params = tuned.tuned_params(record)
    cells, seen = [], {cell.id for cell in loaded.cells}
    for cell in loaded.cells:
        cells.append(cell)
        if cell.setting not in params:
            continue
        try:
            attack = components.from_config("attack", {**cell.attack.config, **params[cell.setting]})
        except ConfigError as exc:
            raise ConfigError(f"{where or '<tuned>'}: the tuned parameters of {cell.label}: {exc}") from None
        twin = replace(cell, attack=attack)
        if twin.id not in seen:
            seen.add(twin.id)
            cells.append(twin)
    return replace(loaded, cells=cells, tuned=record)


def _merge(current: Any, value: Any, key: str, where: str) -> Any:
    if key not in CELL_KEYS:
        raise ConfigError(f"{where}: unknown cell field {key!r}; known: {', '.join(CELL_KEYS)}")
    if key in SCALARS:
        if not isinstance(value, SCALARS[key]) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be {SCALARS[key].__name__}, got {value!r}")
        return value
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a name or a mapping with 'name', got {value!r}")
    if "name" in value:
        return _with_lines(value, value)
    return _with_lines({**(current or {}), **value}, current, value)


def _swept(values: list, where: str) -> list:
    """The grid's defense entries, each ``sweep: true`` entry replaced by its strength axis' points."""
    out = []
    for value in values:
        try:
            points = components.swept(value)
        except ConfigError as exc:
            raise ConfigError(f"{_value_line(value, where)}: {exc}") from None
        out += [value] if points == [value] else [_with_lines(point, value) for point in points]
    return out


def _value_line(value: Any, where: str) -> str:
    """``where`` with the line of ``value`` itself when it remembers one."""
    line = getattr(value, "lines", {}).get("__self__")
    return f"{where.rsplit(':', 1)[0]}:{line}" if line else where


def _with_lines(mapping: dict, *sources: Any) -> Located:
    """A copy of ``mapping`` that remembers the lines its keys had in ``sources`` (later ones win)."""
    located = Located(mapping)
    located.lines = {k: v for src in sources for k, v in getattr(src, "lines", {}).items() if k != "__self__"}
    return located


def _field_where(mapping: Any, parameter: str | None, where: str, source: str) -> str:
    """The line of ``parameter`` inside a component's mapping, else ``where`` (the component's line)."""
    line = getattr(mapping, "lines", {}).get(parameter) if parameter else None
    return f"{source}:{line}" if line else where


def resolve(raw: dict, wheres: dict, source: str, needs: dict, where: dict) -> Cell:
    """The cell of one grid point, every component resolved and validated; the threat model checked against what
    the attack needs (``needs`` caches that per attack setting and protocol: the attack is constructed once per
    setting to say it). ``where``: the cell's field -> ``file:line`` map."""
    if raw["seed"] < 0:
        raise ConfigError(f"{wheres.get('seed', source)}: seed must be >= 0, got {raw['seed']}")
    if raw["batch_size"] < 1:
        raise ConfigError(f"{wheres.get('batch_size', source)}: batch_size must be at least 1")
    if raw["selection"] not in data.SELECTIONS:
        raise ConfigError(f"{wheres.get('selection', source)}: selection must be one of "
                          f"{', '.join(data.SELECTIONS)}, got {raw['selection']!r}")
    resolved: dict[str, Component] = {}
    for key in COMPONENTS:
        context = {"protocol": resolved["protocol"], "batch_size": raw["batch_size"]} if key == "defense" else {}
        try:
            resolved[key] = components.from_config(key, raw[key], **context)
        except ConfigError as exc:
            raise ConfigError(f"{_field_where(raw[key], exc.field, wheres.get(key, source), source)}: {exc}") from exc
    attack, protocol = resolved["attack"], resolved["protocol"].name
    key = json.dumps([attack.config, protocol], sort_keys=True, default=str)
    if key not in needs:
        needs[key] = attack.build().requirements(protocol)
    threat_model = raw["threat_model"]
    if threat_model:
        try:
            threats.check(threat_model, needs[key], attack.name)
        except ConfigError as exc:
            raise ConfigError(f"{wheres.get('threat_model', wheres.get('attack', source))}: {exc}") from exc
    else:
        threat_model = threats.minimal(needs[key])
    return Cell(**resolved, batch_size=raw["batch_size"], seed=raw["seed"], selection=raw["selection"],
                threat_model=threat_model, where=where)
