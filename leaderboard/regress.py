"""The regression gate: attack metrics of a fresh run against a committed baseline CSV.

An attack regresses when, on the same cell setting, it leaks less than the baseline says it did: PSNR lower by more
than ``psnr`` dB, SSIM lower or LPIPS higher by more than their tolerances, label accuracy or the count of exactly
recovered images lower at all. A baseline cell missing from the run fails too.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from giabench.errors import GiabenchError

KEY = ["attack", "attack_params", "defense", "defense_params", "dataset", "model", "model_params", "protocol",
       "protocol_params", "batch_size", "seed"]
TOLERANCE = {"psnr": 1.0, "ssim": 0.05, "lpips": 0.05, "label_acc": 0.0, "exact": 0.0}
PSNR_CEILING = 80.0  # above this a reconstruction is exact to float precision; the digits beyond are rounding noise
HIGHER_IS_MORE_LEAKAGE = {"psnr": True, "ssim": True, "lpips": False, "label_acc": True, "exact": True}


def read_baseline(path: str | Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise GiabenchError(f"baseline {path}: no such file (write one with --update)")
    try:
        frame = pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise GiabenchError(f"baseline {path}: not a CSV file ({type(exc).__name__})") from exc
    missing = [c for c in KEY + list(TOLERANCE) if c not in frame.columns]
    if missing:
        raise GiabenchError(f"baseline {path}: missing column {missing[0]!r}")
    return frame


def compare(run: pd.DataFrame, baseline: pd.DataFrame, tolerance: dict | None = None) -> list[str]:
    """One line per regression; empty when the run is at least as strong as the baseline."""
    tolerance = {**TOLERANCE, **(tolerance or {})}
    run = run.assign(**{k: run[k].astype(str) for k in KEY})
    baseline = baseline.fillna({k: "" for k in KEY}).assign(**{k: baseline[k].astype(str) for k in KEY})
    merged = baseline.merge(run, on=KEY, how="left", suffixes=("_base", ""), indicator=True)
    failures = []
    for _, row in merged.iterrows():
        name = f"{row['attack']} vs {row['defense']} {row['defense_params']} on {row['model']}/{row['dataset']} " \
               f"B={row['batch_size']} seed={row['seed']}"
        if row["_merge"] != "both":
            failures.append(f"missing cell: {name}")
            continue
        for metric, tol in tolerance.items():
            base, now = float(row[f"{metric}_base"]), float(row[metric])
            if metric == "psnr":
                base, now = min(base, PSNR_CEILING), min(now, PSNR_CEILING)
            if math.isnan(base):
                continue
            if math.isnan(now):
                failures.append(f"{name}: {metric} is n/a, baseline {base:.4g}")
                continue
            drop = (base - now) if HIGHER_IS_MORE_LEAKAGE[metric] else (now - base)
            if drop > tol + 1e-9:
                failures.append(f"{name}: {metric} {now:.4g} vs baseline {base:.4g} (tolerance {tol:g})")
    return failures
