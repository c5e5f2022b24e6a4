"""A self-contained HTML report of a run folder, rendered by a Jinja2 template with autoescaping.

What a reader sees, in order:
- per (dataset, model, protocol, batch size) an attack x defense-setting matrix: mean PSNR over seeds with its
  standard deviation and seed count, SSIM and LPIPS beside it, coloured by leakage (green: little, red: much), the
  worst-case attack per defense, and each defense's cost (epsilon with delta and adjacency, bytes, and the accuracy of
  a utility run on the same data and model when one is given);
- the plots: privacy against utility (with a utility run), PSNR against epsilon for the DP defenses, and the leakage
  per round of a run recorded inside a federated app, with its table (epsilon composed so far beside the client's);
- galleries: per (attack, defense) the best, median and worst reconstruction beside its original, 96 px and up (a
  click enlarges);
- the ranking, the label track and every cell, each with its own anchor: configuration, scores, objective trace and
  the attack's own report (R-GAP's ranks, GIFD's chosen stage, ...).
Every string from the run is escaped; images are inline PNG data and plots inline SVG, so the page is one file that
needs no network. Every table sorts by a click on a header; a filter box hides the rows that do not match.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from giabench.contracts import is_private
from giabench.errors import GiabenchError
from giabench.intervals import cluster_bootstrap
from giabench.leaderboard import dp_audit, frontiers, gallery, plots, rounds, summary, tables, text
from giabench.registry import registry
from giabench.store import Store

GROUP = ["dataset", "model", "model_params", "protocol", "protocol_params", "batch_size"]
INTEGER_COLUMNS = {"batch_size", "seed", "iterations", "bytes", "cells", "not_applicable", "failed", "rank"}
COLUMN_NAMES = {"iterations": "budget", "batch_size": "B", "label_acc": "label acc", "label_set_acc": "label set acc",
                "not_applicable": "n/a", "threat_model": "threat", "above": "share above 25 dB",
                "epsilon_training": "epsilon (training run)", "client_epsilon": "epsilon (client's accountant)",
                "epsilon_claimed": "epsilon claimed (cost)", "epsilon_release": "epsilon claimed (first release)",
                "epsilon_lower": "empirical lower bound", "lower_draws": "draws per neighbour",
                "checks_passed": "checks passed", "psnr_interval": "PSNR 95 %", "above_interval": "share 95 %",
                "versus_next": "against the next row", "default_psnr": "default PSNR",
                "default_interval": "default 95 %",
                "tuned_psnr": "tuned PSNR", "tuned_interval": "tuned 95 %", "gain": "gain (dB, paired)",
                "gain_interval": "gain 95 %", "p_value": "Wilcoxon p", "tuned_params": "tuned parameters",
                "attack_minutes": "tuning minutes", "data": "tuned on", "point": "point on the strength axis",
                "attacks": "attack settings compared", "tuned": "training chosen on validation",
                "frontier": "other parameters", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
                "rouge1_interval": "ROUGE-1 95 %", "token_acc": "token acc", "wall_s": "seconds per cell",
                "sequences": "sequences"}
SUMMARY_COLUMNS = [("defense", "defenses"), ("attack", "attacks"), ("dataset", "text"), ("model", "text"),
                   ("batch_size", "int"), ("psnr", "2"), ("psnr_interval", "text"), ("above", "2"),
                   ("above_interval", "text"), ("images", "int"), ("versus_next", "text"), ("epsilon", "2"),
                   ("delta", "text"), ("adjacency", "text"), ("bytes", "int"), ("accuracy", "3"),
                   ("epsilon_training", "2")]

ROUND_COLUMNS = [("round", "int"), ("client", "int"), ("attack", "attacks"), ("defense", "defenses"),
                 ("batch_size", "int"), ("status", "text"), ("psnr", "2"), ("ssim", "3"), ("lpips", "3"),
                 ("epsilon", "2"), ("client_epsilon", "2"), ("delta", "text"), ("adjacency", "text"), ("bytes", "int")]


def number(value, digits: int = 3) -> str:
    """Integers as integers, other floats to ``digits`` significant decimals; n/a and inf spelled out."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = round(float(value), digits) + 0.0  # + 0.0 turns -0.0 into 0.0
        return str(int(value)) if value.is_integer() else f"{value:.{digits}f}".rstrip("0")
    return str(value)


def parameters(kind: str, name: str, params: str, changed_only: bool = True) -> str:
    """``k=v, ...``: the parameters of a component (only those that differ from its defaults, by default)."""
    try:
        items = json.loads(params) if isinstance(params, str) and params else {}
    except ValueError:  # not the JSON giabench writes: show it as it is (escaped by the template)
        return str(params)
    if not isinstance(items, dict):
        return str(params)
    defaults = {"state": "untrained", "mode": "eval"}
    try:
        defaults.update(registry(kind).defaults(name))
    except GiabenchError:  # a component whose package is not installed here
        pass
    shown = {k: v for k, v in items.items() if not changed_only or defaults.get(k) != v}
    return ", ".join(f"{k}={number(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
                     for k, v in shown.items())


def label(kind: str, name: str, params: str) -> str:
    shown = parameters(kind, name, params)
    return f"{name} ({shown})" if shown else name


def leakage_colour(psnr: float | None, label_acc: float | None = None) -> str:
    """A background from green (PSNR 10 dB or less) to red (35 dB or more); label accuracy for label-only cells."""
    if psnr is not None and math.isfinite(psnr):
        t = min(max((psnr - 10) / 25, 0.0), 1.0)
    elif label_acc is not None and math.isfinite(label_acc):
        t = label_acc
    else:
        return "#eeeeee"
    return f"hsl({120 * (1 - t):.0f}, 65%, 82%)"


def _stats(cells: pd.DataFrame) -> dict:
    ok = cells[cells["status"] == "ok"]
    out = {"n": len(ok), "not_applicable": int((cells["status"] == "not-applicable").sum()),
           "failed": int((cells["status"] == "failed").sum())}
    for metric in ("psnr", "ssim", "lpips", "label_acc", "exact"):
        values = pd.to_numeric(ok[metric], errors="coerce").dropna()
        out[metric] = float(values.mean()) if len(values) else None
        out[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
    psnr = pd.to_numeric(ok["psnr"], errors="coerce").dropna().to_numpy()
    out["psnr_interval"] = tables.interval(*cluster_bootstrap([psnr]), 1)  # one cell's mean per seed
    return out


def _cost(cells: pd.DataFrame, accuracy: float | None) -> dict:
    first = cells.iloc[0]
    epsilon = float(first["epsilon"]) if pd.notna(first["epsilon"]) else math.inf
    adjacency = first["adjacency"] if isinstance(first["adjacency"], str) else ""
    text = "inf (no DP)" if math.isinf(epsilon) else f"{number(epsilon, 2)} (δ={first['delta']:g}, {adjacency})"
    return {"epsilon": text, "bytes": number(first["bytes"]) if pd.notna(first["bytes"]) else "n/a",
            "accuracy": number(accuracy, 3) if accuracy is not None else ""}


def _matrices(frame: pd.DataFrame, tradeoff: pd.DataFrame | None) -> list[dict]:
    out = []
    for key, group in frame.groupby(GROUP, sort=False, dropna=False):
        head = dict(zip(GROUP, key, strict=True))
        attacks = list(dict.fromkeys(zip(group["attack"], group["attack_params"], strict=True)))
        defenses = sorted(dict.fromkeys(zip(group["defense"], group["defense_params"], strict=True)),
                          key=lambda d: (d[0] != "none", d[0], d[1]))
        rows, worst, costs = [], {}, []
        for attack in attacks:
            row = []
            for defense in defenses:
                part = group[(group["attack"] == attack[0]) & (group["attack_params"] == attack[1])
                             & (group["defense"] == defense[0]) & (group["defense_params"] == defense[1])]
                stats = _stats(part) if len(part) else None
                if stats and stats["psnr"] is not None and stats["psnr"] > worst.get(defense, ("", -1.0))[1]:
                    worst[defense] = (label("attacks", *attack), stats["psnr"])
                row.append({"stats": stats, "colour": leakage_colour(stats and stats["psnr"],
                                                                     stats and stats["label_acc"]),
                            "anchor": f"g-{_slug(head, attack, defense)}" if stats and stats["n"] else ""})
            rows.append({"label": label("attacks", *attack), "cells": row})
        for defense in defenses:
            part = group[(group["defense"] == defense[0]) & (group["defense_params"] == defense[1])]
            costs.append(_cost(part, _accuracy(tradeoff, head, defense)))
        out.append({"title": f"{head['dataset']} · {label('models', head['model'], head['model_params'])} · "
                             f"{label('protocol', head['protocol'], head['protocol_params'])} · B={head['batch_size']}",
                    "defenses": [label("defenses", *d) for d in defenses], "rows": rows, "costs": costs,
                    "worst": [worst.get(d) for d in defenses], "key": head, "attack_keys": attacks,
                    "defense_keys": defenses})
    return out


def _accuracy(tradeoff: pd.DataFrame | None, head: dict, defense: tuple[str, str]) -> float | None:
    if tradeoff is None or tradeoff.empty:
        return None
    match = tradeoff[(tradeoff["defense"] == defense[0]) & (tradeoff["defense_params"] == defense[1])
                     & (tradeoff["dataset"] == head["dataset"]) & (tradeoff["model"] == head["model"])
                     & (tradeoff["batch_size"] == head["batch_size"])]["accuracy"].dropna()
    return float(match.iloc[0]) if len(match) else None


def _slug(head: dict, attack: tuple, defense: tuple) -> str:
    import hashlib

    text = json.dumps([head, attack, defense], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _galleries(frame: pd.DataFrame, images: pd.DataFrame, run_dir: Path, matrices: list[dict]) -> list[dict]:
    out = []
    for matrix in matrices:
        head = matrix["key"]
        group = frame
        for column in GROUP:
            group = group[group[column] == head[column]]
        for attack in matrix["attack_keys"]:
            for defense in matrix["defense_keys"]:
                part = group[(group["attack"] == attack[0]) & (group["attack_params"] == attack[1])
                             & (group["defense"] == defense[0]) & (group["defense_params"] == defense[1])
                             & (group["status"] == "ok")]
                rows = images[images["cell"].isin(part["cell"])].merge(part[["cell", "image", "seed"]].rename(
                    columns={"image": "grid"}), on="cell")
                tiles = []
                for name, pick in gallery.picks(rows):
                    pair = gallery.pair(run_dir, pick["grid"], int(head["batch_size"]), int(pick["image"]))
                    if pair:
                        tiles.append({"name": name, "original": pair[0], "recon": pair[1], "cell": pick["cell"],
                                      "id": f"z-{pick['cell']}-{int(pick['image'])}", "seed": int(pick["seed"]),
                                      "image": int(pick["image"]), "psnr": number(pick["psnr"], 2),
                                      "ssim": number(pick["ssim"], 3)})
                if tiles:
                    out.append({"anchor": f"g-{_slug(head, attack, defense)}", "tiles": tiles,
                                "title": f"{label('attacks', *attack)} vs {label('defenses', *defense)} — "
                                         f"{matrix['title']}"})
    return out


def _grid(run_dir: Path, relative) -> str:
    path = (run_dir / str(relative)).resolve()
    if not isinstance(relative, str) or not relative or not path.is_file() or run_dir.resolve() not in path.parents:
        return ""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _details(frame: pd.DataFrame, run_dir: Path, stored: pd.DataFrame) -> list[dict]:
    """Every cell: its configuration, scores, trace and attack report (trace and report from the ``stored`` cells)."""
    stored = stored.set_index("cell") if "cell" in stored else stored
    out = []
    for _, row in frame.iterrows():
        extra = stored["extra"].get(row["cell"]) if "extra" in stored else None
        trace = stored["trace"].get(row["cell"]) if "trace" in stored else None
        out.append({
            "id": row["cell"], "title": f"{row['attack']} vs {row['defense']} on {row['model']}/{row['dataset']} "
                                        f"B={number(row['batch_size'])} seed={number(row['seed'])}",
            "config": [(kind, row[kind], parameters(plural, row[kind], row[f"{kind}_params"], changed_only=False))
                       for kind, plural in (("attack", "attacks"), ("defense", "defenses"), ("model", "models"),
                                            ("protocol", "protocols"))],
            "scores": [(COLUMN_NAMES.get(k, k), number(row[k], 3)) for k in
                       ("psnr", "ssim", "lpips", "label_acc", "exact", "iterations", "epsilon", "bytes", "wall_s")],
            "status": row["status"], "note": row["note"] if isinstance(row["note"], str) else "",
            "extra": json.dumps(json.loads(extra), indent=1) if isinstance(extra, str) and extra not in ("", "{}")
            else "",
            "spark": Markup(plots.sparkline(json.loads(trace))) if isinstance(trace, str) and trace else "",
            "grid": _grid(run_dir, row["image"]),
            "numerics": f"{row['device']}, {number(row['threads'])} thread(s), {row['dtype']}, {row['hardware']}",
        })
    return out


def _table(frame: pd.DataFrame, columns: list[tuple[str, str]]) -> dict:
    """Headers and rows (text, sort key) of a sortable table; ``columns``: (column, kind) with kind attack, defense,
    model, protocol (shown with their changed parameters), or a format (int, 2, 3, text)."""
    head = [COLUMN_NAMES.get(c, c) for c, _ in columns]
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for column, kind in columns:
            value = row[column]
            if kind in ("attacks", "defenses", "models", "protocols"):
                text = label(kind, value, row[f"{column}_params"])
                cells.append((text, text))
            elif kind == "text":
                cells.append(("" if pd.isna(value) else str(value), "" if pd.isna(value) else str(value)))
            else:
                numeric = pd.to_numeric(value, errors="coerce")
                key = "" if pd.isna(numeric) else (1e300 if math.isinf(numeric) else float(numeric))
                cells.append((number(numeric, 0 if kind == "int" else int(kind)), key))
        rows.append(cells)
    return {"head": head, "rows": rows}


def _with_intervals(defended: pd.DataFrame) -> pd.DataFrame:
    """The defense summary with its intervals as text columns."""
    return defended.assign(psnr_interval=tables.intervals(defended, "psnr"),
                           above_interval=tables.intervals(defended, "above"))


def _frontier_table(frontier: pd.DataFrame) -> dict | None:
    """Every frontier's points (``giabench.leaderboard.frontiers``); None where the run has none."""
    if frontier.empty:
        return None
    shown = frontier.assign(psnr_interval=tables.intervals(frontier, "psnr"))
    return _table(shown, [("defense", "text"), ("frontier", "text"), ("point", "text"), ("psnr", "2"),
                          ("psnr_interval", "text"), ("attack", "attacks"), ("attacks", "int"), ("accuracy", "3"),
                          ("epsilon_training", "2"), ("adjacency", "text"), ("tuned", "text")])


def _tuned_table(tuned: pd.DataFrame | None) -> dict | None:
    """The tuned-against-default table (``giabench.leaderboard.tuning``); None where no tuning ran."""
    if tuned is None or tuned.empty:
        return None
    shown = tuned.assign(default_interval=tables.intervals(tuned, "default"),
                         tuned_interval=tables.intervals(tuned, "tuned"), gain_interval=tables.intervals(tuned, "gain"),
                         p_value=tuned["p"].map(lambda p: "" if pd.isna(p) else f"{p:.2g}"))
    return _table(shown, [("setting", "text"), ("defense", "defenses"), ("threat_model", "text"),
                          ("default_psnr", "2"), ("default_interval", "text"), ("tuned_psnr", "2"),
                          ("tuned_interval", "text"), ("gain", "2"), ("gain_interval", "text"), ("p_value", "text"),
                          ("images", "int"), ("tuned_params", "text"), ("trials", "int"), ("attack_minutes", "2"),
                          ("data", "text"), ("status", "text")])


def _text_section(frame: pd.DataFrame, images: pd.DataFrame) -> dict | None:
    """The text settings' table and reconstructed sentences (``giabench.leaderboard.text``); None without any."""
    settings = text.table(frame, images)
    if settings.empty:
        return None
    shown = settings.assign(rouge1_interval=tables.intervals(settings, "rouge1", 1))
    examples = [{"title": f"{label('attacks', e['setting']['attack'], e['setting']['attack_params'])} vs "
                          f"{label('defenses', e['setting']['defense'], e['setting']['defense_params'])} on "
                          f"{label('models', e['setting']['model'], e['setting']['model_params'])}, "
                          f"B = {int(e['setting']['batch_size'])}", "pairs": e["pairs"]}
                for e in text.examples(frame, images, settings)]
    return {"table": _table(shown, [("attack", "attacks"), ("defense", "defenses"), ("dataset", "text"),
                                    ("model", "models"), ("protocol", "protocols"), ("batch_size", "int"),
                                    ("rouge1", "1"), ("rouge1_interval", "text"), ("rouge2", "1"),
                                    ("token_acc", "3"), ("exact", "2"), ("wall_s", "2"), ("epsilon", "2"),
                                    ("adjacency", "text"), ("bytes", "int"), ("cells", "int"),
                                    ("sequences", "int")]),
            "examples": examples}


def _privacy_table(run_dir: Path) -> dict | None:
    """The run's privacy audit (``privacy_audit.csv``), one row per DP defense setting; None without one."""
    audited = dp_audit.read_summary(run_dir)
    if audited is None:
        return None
    audited = audited.assign(verdict=["pass" if bool(p) else "FAIL: " + f for p, f in
                                      zip(audited["passed"], audited["failures"], strict=True)],
                             checks_passed=[f"{int(p)} of {int(n)}" for p, n in
                                            zip(audited["checks_passed"], audited["checks"], strict=True)])
    return _table(audited, [("setting", "text"), ("adjacency", "text"), ("delta", "text"),
                            ("epsilon_claimed", "2"), ("epsilon_release", "2"), ("epsilon_lower", "2"),
                            ("lower_draws", "int"), ("checks_passed", "text"), ("verdict", "text")])


def utility_points(tradeoff: pd.DataFrame | None) -> pd.DataFrame:
    """The privacy-utility plot's points: one per defense setting, labelled with its changed parameters."""
    if tradeoff is None or tradeoff.empty:
        return pd.DataFrame(columns=["label", "accuracy", "psnr", "group"])
    return pd.DataFrame({
        "label": [label("defenses", d, p) for d, p in zip(tradeoff["defense"], tradeoff["defense_params"],
                                                          strict=True)],
        "accuracy": tradeoff["accuracy"], "psnr": tradeoff["psnr"],
        "group": tradeoff["dataset"] + ", " + tradeoff["model"] + ", B=" + tradeoff["batch_size"].astype(str)})


def _epsilon_points(frame: pd.DataFrame) -> pd.DataFrame:
    scored = frame[(frame["status"] == "ok") & frame["psnr"].notna()]
    by_setting = scored.groupby(["attack", "attack_params", "defense", "defense_params", "dataset", "model",
                                 "batch_size"], dropna=False).agg(psnr=("psnr", "mean"), epsilon=("epsilon", "first"),
                                                                  adjacency=("adjacency", "first"))
    eps = by_setting.reset_index()
    eps["group"] = eps["dataset"] + ", " + eps["model"] + ", B=" + eps["batch_size"].astype(str)
    eps["kind"] = ["none" if d == "none" else "dp" if is_private({"adjacency": a if isinstance(a, str) else ""})
                   else "other" for d, a in zip(eps["defense"], eps["adjacency"], strict=True)]
    eps["attack"] = [label("attacks", a, p) for a, p in zip(eps["attack"], eps["attack_params"], strict=True)]
    return eps


def write(frame: pd.DataFrame, run_dir: str | Path, path: str | Path, title: str = "giabench leaderboard",
          tradeoff: pd.DataFrame | None = None, utility: pd.DataFrame | None = None,
          defended: pd.DataFrame | None = None, tuned: pd.DataFrame | None = None,
          frontier: pd.DataFrame | None = None) -> None:
    """Render the report of ``frame`` (the run's cells) to ``path``; ``tradeoff``: the privacy-utility table,
    ``utility``: the rows of the utility run it joins (their accuracy enters the defense summary), ``defended``: that
    summary when the caller has it already (``summary.defense_summary``; computed here otherwise)."""
    run_dir = Path(run_dir)
    try:
        store = Store(run_dir, create=False)
        images, stored = store.images(), store.cells()
    except GiabenchError:
        images, stored = pd.DataFrame(columns=["cell", "image", "psnr", "ssim"]), pd.DataFrame()
    per_round = rounds.table(stored)
    matrices = _matrices(frame, tradeoff)
    if defended is None:
        defended = summary.defense_summary(frame, images, utility)
    if frontier is None:
        frontier = frontiers.table(frame, images, utility)
    trained_on = sorted({f"{d}/{m}" for d, m in zip(utility["dataset"], utility["model"], strict=True)}) \
        if utility is not None else []
    plot_list = [(name, Markup(svg)) for name, svg in (
        ("Privacy against utility", plots.privacy_utility(utility_points(tradeoff))),
        ("Frontiers against accuracy", plots.frontiers(frontier, "accuracy", "psnr", "Frontiers: worst-case leakage "
                                                       "against accuracy (hollow: no defense)")),
        ("Frontiers against epsilon", plots.frontiers(frontier, "epsilon_training", "psnr",
                                                      "DP frontiers: worst-case leakage against epsilon")),
        ("Accuracy against epsilon", plots.frontiers(frontier, "epsilon_training", "accuracy",
                                                     "DP frontiers: accuracy against epsilon, training tuned")),
        ("PSNR against epsilon", plots.psnr_epsilon(_epsilon_points(frame))),
        ("Leakage per round", plots.per_round(per_round))) if svg]
    rank = tables.ranking(frame, images)
    rank.insert(0, "rank", rank.index)
    rank["psnr_interval"] = tables.intervals(rank, "psnr")
    labels = tables.label_track(frame)
    environment = Environment(loader=PackageLoader("giabench.leaderboard", "templates"), autoescape=True)
    page = environment.get_template("report.html.j2").render(
        title=title, cells=len(frame),
        summary=_table(_with_intervals(defended), SUMMARY_COLUMNS) if len(defended) else None,
        trained_on=", ".join(trained_on), lpips_source=str(frame["lpips_source"].iloc[0]) if len(frame) else "",
        matrices=matrices, plots=plot_list, galleries=_galleries(frame, images, run_dir, matrices),
        ranking=_table(rank, [("rank", "int"), ("attack", "attacks"), ("defense", "defenses"), ("dataset", "text"),
                              ("model", "models"), ("protocol", "protocols"), ("batch_size", "int"),
                              ("threat_model", "text"), ("psnr", "2"), ("psnr_interval", "text"), ("ssim", "3"),
                              ("lpips", "3"),
                              ("iterations", "int"), ("exact", "2"), ("label_acc", "2"), ("epsilon", "2"),
                              ("delta", "text"), ("adjacency", "text"), ("bytes", "int"), ("cells", "int")]),
        labels=_table(labels, [("attack", "attacks"), ("defense", "defenses"), ("dataset", "text"),
                               ("model", "models"), ("batch_size", "int"), ("repeats", "text"), ("label_acc", "3"),
                               ("label_set_acc", "3"), ("cells", "int")]) if len(labels) else None,
        tradeoff=_table(tradeoff, [("defense", "defenses"), ("dataset", "text"), ("model", "text"),
                                   ("batch_size", "int"), ("attack", "attacks"), ("psnr", "2"), ("accuracy", "3"),
                                   ("bytes_per_round", "int"), ("epsilon_training", "2"), ("delta_training", "text"),
                                   ("adjacency_training", "text")]) if tradeoff is not None and len(tradeoff) else None,
        rounds=_table(per_round, ROUND_COLUMNS) if len(per_round) else None,
        unscored=int((per_round["lpips_source"] == "unscored").sum()),
        privacy=_privacy_table(run_dir), tuned=_tuned_table(tuned), frontier=_frontier_table(frontier),
        text=_text_section(frame, images), details=_details(frame, run_dir, stored), colour=leakage_colour,
        number=number)
    Path(path).write_text(page, encoding="utf-8")
