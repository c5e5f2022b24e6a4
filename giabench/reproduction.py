"""Reproductions: a paper's published figure, the setting it was measured at as an ordinary suite, and the rule that
says whether our figure at that setting reproduces it.

A reproduction is a YAML file in ``giabench/reproductions`` (``ID.yaml``):

- ``paper`` and ``figure`` (``where`` it is printed, ``url``, ``kind``: table, single run, claim or repository);
- ``setting``: the paper's setting (``needs``: cpu, gpu, ``data:NAME`` a dataset no package ships, ``weights:WHAT``;
  ``data``: what stands in for the paper's data, and why that is fair; ``suite``: an ordinary suite, grid and
  ``utility`` section included) and optionally ``cpu``: a stated, scaled-down version (``what`` it changes), run by
  ``--budget cpu`` and never reported as the paper's figure reproduced;
- ``rows``: per compared figure, the cells it is read from (``where``), the ``metric``, the ``published`` value, the
  ``rule``, where we fall short the measured ``reason``, and where the row departs from the paper's threat model or
  setting on purpose, that ``difference``.

Metrics: ``psnr``, ``ssim``, ``lpips`` (per image), ``rouge1``, ``rouge2``, ``token_acc`` (per sequence of text),
``exact`` (images recovered exactly, summed over the cells),
``batches_exact`` (share of batches recovered whole), ``share_above`` (share of images above ``threshold`` dB) and
``accuracy`` (a utility run's test accuracy; with ``against``, its difference to another defense's).

Rules, given our value v with its 95 % interval [lo, hi] and the published p:
``interval``: reproduced when lo <= p <= hi or |v - p| <= tolerance (a table's mean);
``range``: reproduced when p lies inside the central 95 % of our single runs (a published single run);
``count``: reproduced when |v - p| <= tolerance (exact counts);
``at-least``: reproduced when v >= p (a claim such as "90 % of batches exact").
Otherwise the verdict is ``disagrees`` where the row names a ``difference``, else ``above`` or ``below`` by |v - p|.
Intervals: the mean's by a percentile bootstrap over cells (seeded, so a verdict is reproducible), a share's by
Clopper-Pearson.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from giabench import suite as suites
from giabench.errors import ConfigError
from giabench.intervals import clopper_pearson, cluster_bootstrap
from giabench.utility_config import config_from_mapping
from giabench.yamlfile import packaged, parse_yaml, read_text

FIGURE_KINDS = ("table", "single run", "claim", "repository")
METRICS = ("psnr", "ssim", "lpips", "rouge1", "rouge2", "token_acc", "exact", "batches_exact", "share_above",
           "accuracy")
IMAGE_METRICS = ("psnr", "ssim", "lpips", "rouge1", "rouge2", "token_acc")  # per image, or per sequence of text
RULES = ("interval", "range", "count", "at-least")
BUDGETS = ("paper", "cpu")
NEED_KINDS = ("cpu", "gpu", "data", "weights")
WHERE_COLUMNS = ("attack", "defense", "dataset", "model", "protocol", "batch_size", "selection")


@dataclass(frozen=True)
class Variant:
    """One runnable version of a reproduction: the paper's setting or its stated CPU-scale version."""

    budget: str
    needs: tuple[str, ...]
    suite: suites.Suite | None  # the attack cells, or None for a utility-only reproduction
    utility: tuple = ()  # UtilityConfigs, one per seed
    what: str = ""  # how a cpu variant differs from the paper's setting
    data: str = ""  # what stands in for the paper's data here, and why that is fair


@dataclass(frozen=True)
class Row:
    """One published figure and how ours is read and judged."""

    figure: str
    where: dict
    metric: str
    published: float
    rule: str
    tolerance: float = 0.0
    threshold: float = 25.0
    against: dict | None = None
    reason: str = ""  # the measured reason, where ours falls short of the paper
    difference: str = ""  # the threat-model or setting difference from the paper that this row carries


@dataclass(frozen=True)
class Reproduction:
    id: str
    title: str
    paper: str
    figure: dict
    variants: dict
    rows: list = field(default_factory=list)
    source: str = ""

    def variant(self, budget: str) -> Variant:
        """The variant ``budget`` runs: ``cpu`` falls back to the paper's setting when that runs on a CPU."""
        return self.variants.get(budget) or self.variants["paper"]


def packaged_ids() -> list[str]:
    return list(packaged("reproductions"))


def load(spec: str) -> Reproduction:
    """A packaged reproduction by id, or a YAML file by path, every field checked."""
    known = packaged("reproductions")
    if spec in known:
        text, source = known[spec].read_text(encoding="utf-8"), f"reproduction {spec}"
    elif spec.endswith((".yaml", ".yml")):
        text, source = read_text(Path(spec), "reproduction file"), spec
    else:
        raise ConfigError(f"unknown reproduction {spec!r}; giabench reproduce --list names them")
    raw = parse_yaml(text, source)
    return from_mapping(raw, source, Path(spec).stem if spec not in known else spec)


def load_all() -> list[Reproduction]:
    return [load(name) for name in packaged_ids()]


def _text(raw: dict, key: str, where: str, required: bool = True) -> str:
    value = raw.get(key, "")
    if (required and not value) or not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be {'a non-empty' if required else 'a'} string, got {value!r}",
                          field=key)
    return value.strip()


def _number(raw: dict, key: str, where: str, default: float | None = None) -> float:
    value = raw.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}", field=key)
    return float(value)


def _needs(raw: Any, where: str) -> tuple[str, ...]:
    needs = raw if isinstance(raw, list) else [raw]
    for need in needs:
        kind = str(need).split(":", 1)[0]
        if not isinstance(need, str) or kind not in NEED_KINDS or (kind in ("data", "weights") and ":" not in need):
            raise ConfigError(f"{where}: needs: {need!r} is not one of cpu, gpu, data:NAME, weights:WHAT")
    return tuple(needs)


def _variant(raw: Any, budget: str, ident: str, where: str) -> Variant:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with needs and a suite or a utility section")
    unknown = sorted(set(raw) - {"needs", "suite", "utility", "seeds", "what", "data"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; known: needs, suite, utility, seeds, what, data")
    if raw.get("suite") is None and raw.get("utility") is None:
        raise ConfigError(f"{where}: needs a suite (attack cells), a utility section (training runs) or both")
    if raw.get("suite") is not None and not isinstance(raw["suite"], dict):
        raise ConfigError(f"{where}: suite must be a suite mapping (defaults, grid)")
    loaded = None
    if raw.get("suite") is not None:
        doc = {"name": ident, "description": f"reproduction {ident} ({budget} budget)", **raw["suite"]}
        loaded = suites.expand(doc, where)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of whole numbers >= 0 (the utility runs' seeds)")
    utility = ()
    if raw.get("utility") is not None:
        base = raw["utility"]
        if not isinstance(base, dict):
            raise ConfigError(f"{where}: utility must be a mapping (as a utility file)")
        utility = tuple(config_from_mapping({**base, "seed": s}, f"{where}: utility") for s in seeds)
    return Variant(budget, _needs(raw.get("needs", "cpu"), where), loaded, utility,
                   _text(raw, "what", where, required=budget == "cpu"), _text(raw, "data", where, required=False))


def _row(raw: Any, where: str) -> Row:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each row is a mapping (figure, where, metric, published, rule)")
    known = {"figure", "where", "metric", "published", "rule", "tolerance", "threshold", "against", "reason",
             "difference"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown row field {unknown[0]!r}; known: {', '.join(sorted(known))}")
    metric, rule = raw.get("metric"), raw.get("rule")
    if metric not in METRICS:
        raise ConfigError(f"{where}: metric must be one of {', '.join(METRICS)}, got {metric!r}", field="metric")
    if rule not in RULES:
        raise ConfigError(f"{where}: rule must be one of {', '.join(RULES)}, got {rule!r}", field="rule")
    if rule == "range" and metric not in IMAGE_METRICS:
        raise ConfigError(f"{where}: rule range compares a single published run with our single runs: it needs a "
                          f"per-image metric ({', '.join(IMAGE_METRICS)}), got {metric!r}")
    selections = [raw.get("where", {})] + ([raw["against"]] if raw.get("against") is not None else [])
    for selection in selections:
        if not isinstance(selection, dict) or not all(isinstance(k, str) for k in selection):
            raise ConfigError(f"{where}: where (and against) must be mappings of column -> value")
        bad = [k for k in selection if k.split(".", 1)[0] not in WHERE_COLUMNS
               and not k.startswith(("attack_params.", "defense_params.", "model_params.", "protocol_params."))]
        if bad:
            raise ConfigError(f"{where}: cannot select on {bad[0]!r}; use {', '.join(WHERE_COLUMNS)} or "
                              "KIND_params.NAME")
    if raw.get("against") is not None and metric != "accuracy":
        raise ConfigError(f"{where}: against compares two utility rows; it needs metric accuracy")
    return Row(_text(raw, "figure", where), dict(raw.get("where", {})), metric, _number(raw, "published", where),
               rule, _number(raw, "tolerance", where, 0.0), _number(raw, "threshold", where, 25.0),
               dict(raw["against"]) if raw.get("against") is not None else None,
               _text(raw, "reason", where, required=False), _text(raw, "difference", where, required=False))


def from_mapping(raw: Any, source: str, ident: str) -> Reproduction:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a reproduction is a mapping (id, title, paper, figure, setting, rows)")
    known = {"id", "title", "paper", "figure", "setting", "cpu", "rows"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")
    if raw.get("id") != ident:
        raise ConfigError(f"{source}: id must be the file's name {ident!r}, got {raw.get('id')!r}")
    figure = raw.get("figure")
    if not isinstance(figure, dict) or figure.get("kind") not in FIGURE_KINDS or not figure.get("where"):
        raise ConfigError(f"{source}: figure needs where (table, figure or run), url and kind (one of "
                          f"{', '.join(FIGURE_KINDS)})")
    variants = {"paper": _variant(raw.get("setting"), "paper", ident, f"{source}: setting")}
    if raw.get("cpu") is not None:
        variants["cpu"] = _variant(raw["cpu"], "cpu", ident, f"{source}: cpu")
    if set(variants["paper"].needs) == {"cpu"} and "cpu" in variants:
        raise ConfigError(f"{source}: the paper's setting needs only a CPU: a cpu variant would only relabel it")
    rows = raw.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{source}: rows must list at least one published figure")
    return Reproduction(ident, _text(raw, "title", source), _text(raw, "paper", source),
                        {k: str(v) for k, v in figure.items()}, variants,
                        [_row(r, f"{source}: rows[{i}]") for i, r in enumerate(rows)], source)


def unmet(needs: tuple[str, ...], device: str) -> list[str]:
    """The hardware needs a run on ``device`` does not meet (``gpu`` off CUDA); data and weights are checked by
    loading them (``giabench.runner.validate``)."""
    return [need for need in needs if need == "gpu" and device != "cuda"]


def _selected(frame: pd.DataFrame, where: dict) -> pd.DataFrame:
    keep = pd.Series(True, index=frame.index)
    for key, value in where.items():
        if "." in key:
            column, name = key.split(".", 1)
            values = frame[column].map(lambda p, n=name: json.loads(p).get(n) if isinstance(p, str) else None)
        else:
            values = frame[key]
        keep &= values.map(lambda v, want=value: v == want or str(v) == str(want))
    return frame[keep]


@dataclass(frozen=True)
class Measured:
    """Our figure: value, its 95 % interval (of the mean, or of single runs for ``range``) and what it pools."""

    value: float
    lo: float
    hi: float
    n: str


def measure(row: Row, cells: pd.DataFrame, images: pd.DataFrame, utility: pd.DataFrame | None) -> Measured | None:
    """Our value of ``row`` from a run's cells and images (or its utility rows); None when no finished cell or
    utility row matches."""
    if row.metric == "accuracy":
        if utility is None:
            return None
        chosen = _selected(utility, row.where)
        if row.against is not None:
            other = _selected(utility, row.against)
            if chosen.empty or other.empty:
                return None
            gap = chosen["accuracy"].mean() - other["accuracy"].mean()
            return Measured(float(gap), math.nan, math.nan, f"{len(chosen)}+{len(other)} runs")
        if chosen.empty:
            return None
        values = chosen["accuracy"].to_numpy(float)
        lo, hi = cluster_bootstrap([values]) if len(values) > 1 else (math.nan, math.nan)
        return Measured(float(values.mean()), lo, hi, f"{len(values)} run{'s' * (len(values) > 1)}")
    if cells.empty:
        return None
    chosen = _selected(cells[cells["status"] == "ok"], row.where)
    if chosen.empty:
        return None
    if row.metric == "exact":
        return Measured(float(chosen["exact"].sum()), math.nan, math.nan,
                        f"{int(chosen['batch_size'].sum())} images, {len(chosen)} batches")
    if row.metric == "batches_exact":
        whole = int((chosen["exact"] == chosen["batch_size"]).sum())
        return Measured(whole / len(chosen), *clopper_pearson(whole, len(chosen)), f"{len(chosen)} batches")
    per_image = images[images["cell"].isin(chosen["cell"])]
    if row.metric == "share_above":
        hits, n = int((per_image["psnr"] > row.threshold).sum()), len(per_image)
        return Measured(hits / n, *clopper_pearson(hits, n), f"{n} images, {len(chosen)} batches")
    values = per_image[["cell", row.metric]].dropna()
    groups = [g[row.metric].to_numpy(float) for _, g in values.groupby("cell")]
    pooled = values[row.metric].to_numpy(float)
    if row.rule == "range":
        lo, hi = (float(np.percentile(pooled, 2.5)), float(np.percentile(pooled, 97.5))) if len(pooled) else (
            math.nan, math.nan)
    else:
        lo, hi = cluster_bootstrap(groups)
    return Measured(float(pooled.mean()), lo, hi, f"{len(pooled)} images, {len(chosen)} batches")


def verdict(row: Row, ours: Measured, budget: str) -> str:
    """The row's verdict (see the module docstring); a cpu-budget run is never 'reproduced'."""
    p, v = row.published, ours.value
    if row.rule in ("interval", "range"):
        inside = (ours.lo <= p <= ours.hi) or abs(v - p) <= row.tolerance
    elif row.rule == "count":
        inside = abs(v - p) <= row.tolerance
    else:
        inside = v >= p
    if inside:
        return "reproduced" if budget == "paper" else "consistent at the cpu budget"
    gap = f"{abs(v - p):.3g}"
    tag = "" if budget == "paper" else " (cpu budget)"
    if row.difference:
        return f"disagrees{tag}"
    return f"{'above' if v > p else 'below'} by {gap}{tag}"
