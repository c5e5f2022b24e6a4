"""Tidy tables from a run folder: one row per cell, and a ranking that averages seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from giabench.errors import GiabenchError
from giabench.intervals import cluster_bootstrap
from giabench.registry import registry
from giabench.store import Store

CSV_COLUMNS = ["attack", "defense", "dataset", "model", "protocol", "batch_size", "seed", "psnr", "ssim", "lpips",
               "label_acc", "iterations", "wall_s", "epsilon", "bytes", "cell", "attack_params", "defense_params",
               "model_params", "protocol_params", "selection", "threat_model", "label_set_acc", "distinct_labels",
               "exact", "delta", "adjacency", "mse", "lpips_source", "device", "threads", "dtype", "hardware", "image",
               "status", "note", "rouge1", "rouge2", "token_acc"]
SETTING = ["attack", "attack_params", "defense", "defense_params", "dataset", "model", "model_params", "protocol",
           "protocol_params", "batch_size", "threat_model"]
METRICS = ["psnr", "ssim", "lpips", "label_acc", "label_set_acc", "rouge1", "rouge2", "token_acc"]


def cells(run_dir: str | Path) -> pd.DataFrame:
    frame = Store(run_dir, create=False).cells()
    frame["epsilon"] = frame["epsilon"].astype(float)
    return frame[CSV_COLUMNS]


def ranking(frame: pd.DataFrame, images: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean metrics per setting over seeds, most leakage (highest PSNR) first; the PSNR's 95 % interval
    (``psnr_lo``, ``psnr_hi``) a bootstrap over the setting's cells, with their per-image scores when ``images`` is
    given."""
    grouped = frame.groupby(SETTING, dropna=False, sort=False)
    table = grouped[METRICS + ["exact", "iterations", "wall_s", "epsilon", "delta", "bytes"]].mean()
    per_image = images.dropna(subset=["psnr"]).groupby("cell")["psnr"].apply(lambda s: s.to_numpy()) \
        if images is not None and len(images) else pd.Series(dtype=object)
    bounds = grouped.apply(lambda g: cluster_bootstrap(
        [per_image[c] if c in per_image.index else g.loc[g["cell"] == c, "psnr"].dropna().to_numpy()
         for c in g["cell"]]), include_groups=False)
    table["psnr_lo"], table["psnr_hi"] = [b[0] for b in bounds], [b[1] for b in bounds]
    table["adjacency"] = grouped["adjacency"].first()
    table["cells"] = grouped.size()
    table["not_applicable"] = grouped["status"].agg(lambda s: int((s == "not-applicable").sum()))
    table = table.reset_index().sort_values("psnr", ascending=False, kind="stable").reset_index(drop=True)
    table.index = table.index + 1
    return table


def cell_interval(cells: pd.Series, images: pd.DataFrame, metric: str = "psnr") -> tuple[float, float]:
    """The 95 % interval of the mean ``metric`` (PSNR, or a per-sequence one such as ROUGE-1) over ``cells`` (ids),
    resampling whole cells with their per-image scores (``images``: the store's per-image rows)."""
    return cluster_bootstrap([images.loc[images["cell"] == c, metric].dropna().to_numpy() for c in cells])


def interval(lo: float, hi: float, digits: int = 2) -> str:
    """``[lo, hi]`` ("" where there is no interval)."""
    return "" if pd.isna(lo) or pd.isna(hi) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def intervals(frame: pd.DataFrame, metric: str, digits: int = 2) -> list[str]:
    """``interval`` of each row's ``METRIC_lo`` and ``METRIC_hi``."""
    return [interval(lo, hi, digits) for lo, hi in zip(frame[f"{metric}_lo"], frame[f"{metric}_hi"], strict=True)]


def short(kind: str, name: str, params: str) -> str:
    """``name(k=v,...)`` with only the parameters that differ from the component's defaults (floats to 4 digits)."""
    items = json.loads(params) if params else {}
    defaults = {"state": "untrained", "mode": "eval"}
    try:
        defaults.update(registry(kind).defaults(name))
    except GiabenchError:  # a component whose package is not installed here
        pass
    changed = ",".join(f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in items.items()
                       if defaults.get(k) != v)
    return f"{name}({changed})" if changed else name


def terminal(table: pd.DataFrame) -> str:
    def labels(kind, column):
        return [short(kind, n, p) for n, p in zip(table[column.split("_")[0]], table[column], strict=True)]

    view = pd.DataFrame({
        "attack": labels("attacks", "attack_params"), "defense": labels("defenses", "defense_params"),
        "model": labels("models", "model_params"), "data": table["dataset"], "B": table["batch_size"],
        "PSNR": table["psnr"].map("{:.2f}".format),
        "95 %": intervals(table, "psnr"),
        "SSIM": table["ssim"].map("{:.3f}".format),
        "LPIPS": table["lpips"].map("{:.3f}".format), "budget": table["iterations"].map("{:.0f}".format),
        "label": table["label_acc"].map("{:.2f}".format),
        **({"ROUGE-1": table["rouge1"].map(lambda r: "" if pd.isna(r) else f"{r:.1f}")}
           if table["rouge1"].notna().any() else {}),
        "exact": table["exact"].map(lambda e: "" if pd.isna(e) else f"{e:.1f}"),
        "eps": table["epsilon"].map(lambda e: "inf" if e is None or math.isnan(e) or math.isinf(e) else f"{e:.2f}"),
        "delta": table["delta"].map(lambda d: f"{d:g}" if d else ""),
        "adjacency": table["adjacency"].fillna(""),
        "cells": table["cells"],
    })
    return view.to_string()


def label_track(frame: pd.DataFrame) -> pd.DataFrame:
    """Label-count and label-set accuracy of every cell that recovers labels, per method, model and batch size,
    split by whether the batch repeated a label."""
    labelled = frame[frame["label_acc"].notna()].copy()
    labelled["repeats"] = labelled["distinct_labels"] < labelled["batch_size"]
    keys = ["attack", "attack_params", "defense", "defense_params", "dataset", "model", "model_params", "batch_size",
            "repeats"]
    grouped = labelled.groupby(keys, sort=True)
    table = grouped[["label_acc", "label_set_acc"]].mean()
    table["cells"] = grouped.size()
    return table.reset_index()


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    frame.to_csv(path, index=False, float_format="%.6g")
