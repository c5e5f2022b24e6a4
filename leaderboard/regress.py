"""The regression gate: a fresh run of a suite judged, setting by setting, against a committed baseline.

A *setting* is a cell without its seed (attack, defense, dataset, model, protocol, batch size, selection and threat
model, with their parameters). ``summarize`` reduces a run to one row per setting: for each leakage metric its mean,
standard deviation and count over seeds and the tolerance the gate allows, and the setting's costs (epsilon, delta,
adjacency, bytes). The baseline is such a summary, written by ``giabench regress --update``. Two kinds of settings:

- ``exact``: analytic and label-inference attacks compute their result in closed form from the message, so another
  CPU or thread count moves it by float rounding only (PSNR is capped at 80 dB by ``giabench.metrics``). Compared to
  ``EXACT_TOLERANCE``, in both directions: an exact result that moves is a change, stronger or weaker.
- ``aggregate``: optimization and generative attacks are chaotic in float32; on another machine a cell is another
  draw. Judged by the mean over >= ``MIN_SEEDS`` seeds with
      tolerance = max(FLOOR[m], K * s / sqrt(n)),
  s the standard deviation over the baseline's seeds, n their count. PSNR enters clipped at the 40 dB above which a
  reconstruction counts as exact (``giabench.metrics.EXACT_DB``): 45 dB or 63 dB is the same leak, and the digits
  between are convergence noise that would swamp the mean. Label accuracy is exact whenever the labels are not
  optimized (known, or inferred in closed form).

The gate fails on: an attack that leaks less than its baseline beyond tolerance (PSNR, SSIM, exact count or label
accuracy lower, LPIPS higher; for text, ROUGE-1, ROUGE-2 or token accuracy lower); a *privacy regression*, a defended
setting that leaks more beyond tolerance; an exact setting that moves; epsilon, delta, adjacency or bytes that differ;
a setting whose count of cells or of not-applicable cells differs, one missing from the run, or one the baseline
lacks. An undefended aggregate setting that leaks more is reported as a note (update the baseline to bank it).

How ``K`` and the floors were derived (``benchmarks/gate_spread.py`` reruns the measurement): the smoke suite ran
under the reference numerics (1 thread, AVX-512 kernels) and under 2 threads, AVX2 kernels (torch, MKL and oneDNN
capped at AVX2, as on an AVX2-only CPU) and baseline x86 kernels (SSE4); ``--workers 2`` and ``OMP_NUM_THREADS=1``
reproduced the reference bit for bit. See ``baselines/README.md`` for the figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from giabench.errors import GiabenchError
from giabench.metrics import EXACT_DB
from giabench.registry import attacks

SETTING = ["attack", "attack_params", "defense", "defense_params", "dataset", "model", "model_params", "protocol",
           "protocol_params", "batch_size", "selection", "threat_model"]
LEAKS_MORE_WHEN_HIGHER = {"psnr": True, "ssim": True, "lpips": False, "exact": True, "label_acc": True,
                          "rouge1": True, "rouge2": True, "token_acc": True}
#: metrics a baseline written before the text modality lacks: read as NaN (no cell of such a baseline has them)
TEXT_METRICS = ("rouge1", "rouge2", "token_acc")
COSTS = ("epsilon", "delta", "adjacency", "bytes")
EXACT_FAMILIES = ("analytic", "label")
MIN_SEEDS = 3
K = 2.0
FLOOR = {"psnr": 1.0, "ssim": 0.03, "lpips": 0.03, "exact": 0.5, "label_acc": 0.25, "rouge1": 5.0, "rouge2": 5.0,
         "token_acc": 0.05}
EXACT_TOLERANCE = {"psnr": 0.01, "ssim": 1e-3, "lpips": 1e-3, "exact": 0.0, "label_acc": 0.0, "rouge1": 0.01,
                   "rouge2": 0.01, "token_acc": 1e-4}
EPSILON_RTOL = 1e-6


def judge(attack: str, attack_params: str) -> str:
    """``exact`` for closed-form attacks (by family unless the attack says), ``aggregate`` for chaotic ones."""
    cls = attacks.get(attack)
    closed = cls.family in EXACT_FAMILIES if cls.closed_form is None else cls.closed_form
    return "exact" if closed else "aggregate"


def _metric_judge(setting_judge: str, metric: str, attack_params: str) -> str:
    labels = json.loads(attack_params or "{}").get("labels", "")
    return "exact" if setting_judge == "exact" or (metric == "label_acc" and labels != "optimized") else "aggregate"


def tolerance(metric: str, kind: str, std: float, n: int) -> float:
    if kind == "exact":
        return EXACT_TOLERANCE[metric]
    return max(FLOOR[metric], K * (std if math.isfinite(std) else 0.0) / math.sqrt(max(n, 1)))


def summarize(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: judge, cell counts, per metric mean/std/n/tolerance, and the costs."""
    frame = cells.assign(**{k: cells[k].fillna("").astype(str) for k in SETTING if k != "batch_size"})
    rows = []
    for key, group in frame.groupby(SETTING, sort=False, dropna=False):
        row = dict(zip(SETTING, key, strict=True))
        kind = judge(row["attack"], row["attack_params"])
        ok = group[group["status"] == "ok"]
        row.update(judge=kind, cells=len(group), not_applicable=int((group["status"] != "ok").sum()))
        for metric in LEAKS_MORE_WHEN_HIGHER:
            values = pd.to_numeric(ok[metric], errors="coerce").dropna()
            metric_kind = _metric_judge(kind, metric, row["attack_params"])
            if metric == "psnr" and metric_kind == "aggregate":
                values = values.clip(upper=EXACT_DB)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row.update({f"{metric}_mean": float(values.mean()) if len(values) else math.nan, f"{metric}_std": std,
                        f"{metric}_n": len(values), f"{metric}_tol": tolerance(metric, metric_kind, std, len(values))})
        for cost in COSTS:
            values = group[cost].dropna().unique()
            row[cost] = values[0] if len(values) == 1 else (math.nan if not len(values) else "varies")
        row["numerics"] = "; ".join(sorted({f"{d} x{t} {h}" for d, t, h in
                                            zip(group["device"], group["threads"], group["hardware"], strict=True)}))
        rows.append(row)
    return pd.DataFrame(rows)


def check_baseline(summary: pd.DataFrame) -> None:
    """A baseline must give every aggregate setting enough seeds for its mean to mean something."""
    thin = summary[(summary["judge"] == "aggregate") & (summary["cells"] < MIN_SEEDS)]
    if len(thin):
        raise GiabenchError(f"setting {_name(thin.iloc[0])} has {thin.iloc[0]['cells']} seed(s); the gate judges "
                            f"optimization and generative attacks by a mean over >= {MIN_SEEDS} seeds")
    varies = summary[(summary[list(COSTS)] == "varies").any(axis=1)]
    if len(varies):
        raise GiabenchError(f"setting {_name(varies.iloc[0])}: epsilon, delta, adjacency or bytes differ between seeds")


def read_baseline(path: str | Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise GiabenchError(f"baseline {path}: no such file (write one with --update)")
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={k: str for k in SETTING})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise GiabenchError(f"baseline {path}: not a CSV file ({type(exc).__name__})") from exc
    for metric in TEXT_METRICS:
        if f"{metric}_mean" not in frame.columns:
            frame = frame.assign(**{f"{metric}_{s}": math.nan for s in ("mean", "std", "tol")}, **{f"{metric}_n": 0})
    needed = SETTING + ["judge", "cells", "not_applicable", *COSTS] + [
        f"{m}_{s}" for m in LEAKS_MORE_WHEN_HIGHER for s in ("mean", "std", "n", "tol")]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise GiabenchError(f"baseline {path}: missing column {missing[0]!r} (a per-setting summary is expected; "
                            "write one with --update)")
    return frame.fillna({k: "" for k in SETTING})


def write_baseline(summary: pd.DataFrame, path: str | Path) -> None:
    summary.to_csv(path, index=False, float_format="%.10g")


def _name(row) -> str:
    params = f" {row['defense_params']}" if row["defense_params"] not in ("", "{}") else ""
    return (f"{row['attack']} {row['attack_params']} vs {row['defense']}{params} on {row['model']}/{row['dataset']} "
            f"{row['protocol']} B={row['batch_size']}")


def _same_cost(cost: str, base, now) -> bool:
    if cost == "adjacency":
        return str(base if isinstance(base, str) else "") == str(now if isinstance(now, str) else "")
    base, now = float(base), float(now)
    if math.isnan(base) or math.isnan(now) or math.isinf(base) or math.isinf(now):
        return (math.isnan(base) and math.isnan(now)) or base == now
    return math.isclose(base, now, rel_tol=EPSILON_RTOL if cost == "epsilon" else 0.0, abs_tol=0.0)


def compare(run: pd.DataFrame, baseline: pd.DataFrame, partial: bool = False) -> tuple[list[str], list[str]]:
    """Judge a run's per-setting summary against the baseline's: (failures, notes), one line each. ``partial``: the
    run covers only some of the baseline's settings; the others are not reported missing."""
    key = [k for k in SETTING if k != "batch_size"]
    run = run.assign(batch_size=run["batch_size"].astype(int), **{k: run[k].astype(str) for k in key})
    baseline = baseline.assign(batch_size=baseline["batch_size"].astype(int),
                               **{k: baseline[k].astype(str) for k in key})
    merged = baseline.merge(run, on=SETTING, how="outer", suffixes=("_base", ""), indicator=True)
    failures, notes = [], []
    for _, row in merged.iterrows():
        name = _name(row)
        if row["_merge"] == "left_only" and partial:
            continue
        if row["_merge"] != "both":
            failures.append(f"missing setting: {name}" if row["_merge"] == "left_only" else
                            f"new setting not in the baseline: {name} (update the baseline)")
            continue
        for count in ("cells", "not_applicable"):
            if int(row[f"{count}_base"]) != int(row[count]):
                failures.append(f"changed: {name}: {count} {int(row[count])} vs baseline {int(row[f'{count}_base'])}")
        for cost in COSTS:
            if not _same_cost(cost, row[f"{cost}_base"], row[cost]):
                failures.append(f"changed: {name}: {cost} {row[cost]} vs baseline {row[f'{cost}_base']}")
        defended = row["defense"] != "none"
        for metric, higher_leaks in LEAKS_MORE_WHEN_HIGHER.items():
            base, now, tol = (float(row[f"{metric}_mean_base"]), float(row[f"{metric}_mean"]),
                              float(row[f"{metric}_tol_base"]))
            if math.isnan(base) and math.isnan(now):
                continue
            kind = _metric_judge(row["judge_base"], metric, row["attack_params"])
            figure = f"{metric} {now:.4g} vs baseline {base:.4g} (tolerance {tol:.3g}, {kind})"
            if math.isnan(base) or math.isnan(now):
                failures.append(f"changed: {name}: {figure}")
                continue
            leak = (now - base) if higher_leaks else (base - now)
            if leak < -tol - 1e-9:
                failures.append(f"weaker: {name}: {figure}")
            elif leak > tol + 1e-9 and defended:
                failures.append(f"privacy regression: defense {row['defense']} leaks more: {name}: {figure}")
            elif leak > tol + 1e-9 and kind == "exact":
                failures.append(f"changed: {name}: {figure}")
            elif leak > tol + 1e-9:
                notes.append(f"stronger: {name}: {figure}")
    return failures, notes
