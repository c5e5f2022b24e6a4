"""giabench audit: how much a practitioner's own model leaks, under their protocol, batch sizes and defenses.

The model comes from an importable factory (``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``, no pickle) as the
zoo model ``factory``. The battery is every registered attack that applies (``battery``): each attack says what it
runs with at the audit's level (``Attack.for_audit``) and whether it applies to the model, protocol and batch size
(``Attack.applies``); nothing here names an attack. The battery runs as an ordinary suite in the run folder
(resumable, the same store), and ``giabench.app.audit_report`` turns the cells into verdicts, one per threat model,
weakest first. The generated suite file is written beside the results, so the audit can be rerun or extended with
``giabench run``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from torch import nn

from giabench import components, data, models, protocols, suite
from giabench.app import audit_report, commands
from giabench.components import Component
from giabench.contracts import AUDIT_LEVELS
from giabench.errors import ConfigError, GiabenchError, NotApplicable
from giabench.leaderboard import plots, tables
from giabench.registry import attacks
from giabench.store import Store
from giabench.utility_config import UtilityConfig

#: seeds per cell and utility rounds at each audit level (each attack sets its own budget: ``Attack.for_audit``)
LEVELS = dict(zip(AUDIT_LEVELS, ({"seeds": [0], "rounds": 3}, {"seeds": [0, 1], "rounds": 20},
                                 {"seeds": [0, 1, 2, 3], "rounds": 100}), strict=True))


def battery(net: nn.Module, shape: tuple[int, ...], protocol: dict, batch_sizes: list[int], level: str,
            modality: str = "image") -> tuple[list[dict], list[tuple[str, str]]]:
    """Every registered attack on ``modality`` data that applies to ``net`` as a suite grid entry (attack with its
    audit parameters, the batch sizes it applies at), and those that do not, each with the reason."""
    entries, skipped = [], []
    for name in attacks.names():
        kind = attacks.get(name)
        if modality not in kind.modalities:
            continue
        try:
            params = kind.for_audit(level, tuple(shape))
        except NotApplicable as exc:
            skipped.append((name, str(exc)))
            continue
        attack = components.attack(name, params).build()
        reasons = {b: attack.applies(net, tuple(shape), protocol["name"], b) for b in batch_sizes}
        sizes = [b for b in batch_sizes if reasons[b] is None]
        if sizes:
            entries.append({"attack": {"name": name, **params}, "batch_size": sizes})
        else:
            skipped.append((name, reasons[batch_sizes[0]]))
    return entries, skipped


def parse_defenses(text: str, protocol: Component, batch_sizes: list[int]) -> list[dict]:
    """``none,dp-sgd:noise_multiplier=1,prune:fraction=0.9`` -> defense configs (values read as YAML scalars),
    each checked against its defense's parameters, ``protocol`` and every batch size."""
    configs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, rest = item.partition(":")
        config = {"name": name}
        for assignment in filter(None, rest.split(";" if ";" in rest else ":")):
            key, sep, value = assignment.partition("=")
            if not sep or not key:
                raise ConfigError(f"--defenses: expected NAME:KEY=VALUE, got {item!r}")
            try:
                config[key] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"--defenses: cannot read the value of {key} in {item!r}") from None
        for size in batch_sizes:
            try:
                components.from_config("defense", config, protocol=protocol, batch_size=size)
            except ConfigError as exc:
                raise ConfigError(f"--defenses: {exc}", field=exc.field) from None
        configs.append(config)
    if not configs:
        raise ConfigError("--defenses: name at least one defense (none for the undefended model)")
    return configs


def parse_batch_sizes(text: str) -> list[int]:
    sizes = text.split(",")
    if not all(s.strip().isdigit() and int(s) >= 1 for s in sizes):
        raise ConfigError(f"--batch-sizes: expected whole numbers >= 1 separated by commas, got {text!r}")
    return sorted({int(s) for s in sizes})


def suite_document(name: str, dataset: str, model: dict, protocol: dict, defense_list: list[dict],
                   entries: list[dict], level: str) -> dict:
    """The suite the audit runs, as it is written to ``audit-suite.yaml``; its utility section trains under FedAvg
    (the audited protocol's settings when it is FedAvg, the protocol's defaults otherwise)."""
    seeds = LEVELS[level]["seeds"]
    return {
        "name": name,
        "description": f"giabench audit of {model['factory']} ({level} budget)",
        "defaults": {"dataset": dataset, "model": model, "protocol": protocol, "selection": "random"},
        "grid": [{**entry, "defense": defense_list, "seed": seeds} for entry in entries],
        "utility": {"dataset": dataset, "model": model,
                    "protocol": protocol if protocol["name"] == "fedavg" else {"name": "fedavg"},
                    "rounds": LEVELS[level]["rounds"], "clients": 4, "batch": 32, "defenses": defense_list},
    }


def dump_suite(document: dict, path: Path) -> None:
    """The suite as plain YAML (no anchors), readable and editable by hand."""

    class Plain(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True

    path.write_text(yaml.dump(document, Dumper=Plain, sort_keys=False), encoding="utf-8")


def protocol_config(name: str, epochs: int | None, local_batch: int | None, lr: float | None,
                    shuffle: bool | None = None) -> dict:
    """The audited protocol; FedAvg's settings not given are the protocol's own defaults."""
    given = {k: v for k, v in (("epochs", epochs), ("batch_size", local_batch), ("lr", lr), ("shuffle", shuffle))
             if v is not None}
    if name != "fedavg" and given:
        raise ConfigError(f"--epochs, --local-batch, --lr and --shuffle set FedAvg's local training; --protocol is "
                          f"{name}")
    return {"name": name, **protocols.resolve_params(name, given, f"--protocol {name}")}


def run(model: str, out: str, weights: str = "", data_name: str = "cifar10-sample", protocol: str = "fedsgd",
        epochs: int | None = None, local_batch: int | None = None, lr: float | None = None,
        shuffle: bool | None = None, batch_sizes: str = "1,8", defense_list: str = "none,dp-sgd:noise_multiplier=1",
        budget: str = "standard", device: str = "cpu", threads: int = 1, workers: int = 1, quiet: bool = False,
        dtype: str = "float32") -> int:
    """``giabench audit``: every input checked first, then the battery run as a suite in ``out``, then the
    verdicts, the defense table and the plots in ``out/audit.md``."""
    if budget not in LEVELS:
        raise ConfigError(f"--budget must be one of {', '.join(LEVELS)}, got {budget!r}")
    sizes = parse_batch_sizes(batch_sizes)
    proto = protocol_config(protocol, epochs, local_batch, lr, shuffle)
    settings = parse_defenses(defense_list, components.from_config("protocol", proto), sizes)
    folder = commands.out_dir(out, Path(out))
    env = commands.environment(device, threads, workers, dtype=dtype)
    if os.getcwd() not in sys.path:  # the user's module sits beside them, as for python -m
        sys.path.insert(0, os.getcwd())
    imageset = data.load(data_name)
    spec = {"name": "factory", "factory": model, **({"weights": weights} if weights else {})}
    net = models.build("factory", {k: v for k, v in spec.items() if k != "name"}, imageset, "untrained", 0).net
    entries, skipped = battery(net, imageset.shape, proto, sizes, budget, imageset.modality)
    document = suite_document("audit", data_name, spec, proto, settings, entries, budget)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        suite_file = folder / "audit-suite.yaml"
        dump_suite(document, suite_file)
    except OSError as exc:
        raise GiabenchError(f"--out {out}: cannot write the audit's suite there ({exc.strerror})") from None
    loaded = suite.expand(document, str(suite_file))
    code = commands.execute(loaded, folder, env, workers=workers, quiet=quiet)
    lines = write(folder, suite_file, loaded, skipped, data_name, len(imageset))
    print("\n".join(["", "verdicts (weakest attacker first):", *(f"  {line}" for line in lines),
                     *(f"  not applicable: {attack}: {reason}" for attack, reason in skipped),
                     f"wrote {folder / 'audit.md'} and {suite_file}"]))
    return code


def write(folder: Path, suite_file: Path, loaded: suite.Suite, skipped: list[tuple[str, str]], data_name: str,
          images: int) -> list[str]:
    """``audit.md`` and the leakage plots from this audit's cells (an earlier audit in the folder is left out);
    returns the verdicts."""
    ids = {cell.id for cell in loaded.cells}
    cells, shown = tables.cells(folder), Store(folder).images()
    cells, shown = cells[cells["cell"].isin(ids)], shown[shown["cell"].isin(ids)]
    utility, measure = loaded.utility, audit_report.Measure.of(cells)
    note = (f"Accuracy: {utility.rounds} FedAvg rounds of {utility.clients} clients on {data_name} "
            f"(test {measure.sample}s: {round(UtilityConfig.test_fraction * images)}); epsilon (utility run) "
            "composes every round of that run.")
    cells = cells.assign(local_steps=[audit_report.local_steps(row) for _, row in cells.iterrows()])
    ylabel = f"worst-case mean {measure.unit} over the battery"
    figures = {"leakage_batch.svg": plots.leakage(audit_report.leakage_curves(cells, "batch_size"), "batch_size",
                                                  "client batch size", "Leakage against batch size", ylabel),
               "leakage_steps.svg": plots.leakage(audit_report.leakage_curves(cells, "local_steps"), "local_steps",
                                                  "local gradient steps per update", "Leakage against local steps",
                                                  ylabel)}
    lines = audit_report.verdicts(cells, shown)
    table = audit_report.defense_table(cells, shown, audit_report.utility_costs(folder / "utility" / "utility.csv"))
    audit_report.write_report(folder, suite_file, lines, skipped, table, figures, note, measure)
    return lines
