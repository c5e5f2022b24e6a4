"""Tidy tables from a run folder: one row per cell, and a ranking that averages seeds."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from giabench.store import Store

CSV_COLUMNS = ["attack", "defense", "dataset", "model", "protocol", "batch_size", "seed", "psnr", "ssim", "lpips",
               "label_acc", "iterations", "wall_s", "epsilon", "bytes", "cell", "attack_params", "defense_params",
               "model_params", "protocol_params", "selection", "delta", "mse", "lpips_source", "device", "image"]
SETTING = ["attack", "attack_params", "defense", "defense_params", "dataset", "model", "model_params", "protocol",
           "protocol_params", "batch_size"]
METRICS = ["psnr", "ssim", "lpips", "label_acc"]


def cells(run_dir: str | Path) -> pd.DataFrame:
    frame = Store(run_dir, create=False).cells()
    frame["epsilon"] = frame["epsilon"].astype(float)
    return frame[CSV_COLUMNS]


def ranking(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean metrics per setting over seeds, most leakage (highest PSNR) first."""
    grouped = frame.groupby(SETTING, dropna=False, sort=False)
    table = grouped[METRICS + ["iterations", "wall_s", "epsilon", "bytes"]].mean()
    table["cells"] = grouped.size()
    table = table.reset_index().sort_values("psnr", ascending=False, kind="stable").reset_index(drop=True)
    table.index = table.index + 1
    return table


def _setting_label(params: str) -> str:
    """Compact 'k=v' text of a JSON parameter string for the terminal."""
    import json

    items = json.loads(params) if params else {}
    return ",".join(f"{k}={v}" for k, v in items.items())


def terminal(table: pd.DataFrame) -> str:
    view = pd.DataFrame({
        "attack": table["attack"], "defense": table["defense"] + table["defense_params"].map(
            lambda p: f"({_setting_label(p)})" if _setting_label(p) else ""),
        "model": table["model"], "data": table["dataset"], "B": table["batch_size"],
        "PSNR": table["psnr"].map("{:.2f}".format), "SSIM": table["ssim"].map("{:.3f}".format),
        "LPIPS": table["lpips"].map("{:.3f}".format), "label": table["label_acc"].map("{:.2f}".format),
        "eps": table["epsilon"].map(lambda e: "inf" if e is None or math.isnan(e) or math.isinf(e) else f"{e:.2f}"),
        "cells": table["cells"],
    })
    return view.to_string()


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    frame.to_csv(path, index=False, float_format="%.6g")
