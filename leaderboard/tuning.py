"""Tuned against default attacks, per setting a tuning run tuned, scored on the private batches.

For each setting of the record (``giabench.tuned``) the run's cells at the default parameters and their twins at the
tuned ones ran on the same private batches and seeds (none used in tuning): the table gives each mean PSNR with its
95 % interval (a bootstrap over cells, their images resampled together), the paired difference on the same images
with its interval and Wilcoxon p, and what the tuning cost (trials, minutes of attack time) and ran on.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from giabench.intervals import paired
from giabench.leaderboard.summary import per_image
from giabench.leaderboard.tables import cell_interval, intervals
from giabench.suite import setting_id

COLUMNS = ["attack", "defense", "defense_params", "setting", "threat_model", "default_psnr", "default_lo", "default_hi",
           "tuned_psnr", "tuned_lo", "tuned_hi", "gain", "gain_lo", "gain_hi", "p", "images", "tuned_params", "trials",
           "attack_minutes", "data", "status"]
FILE = "tuning.csv"


def setting_of(config: str) -> str:
    """A stored cell's setting key (``Cell.setting``) from its config column."""
    return setting_id(json.loads(config))


def table(stored: pd.DataFrame, images: pd.DataFrame, record: dict) -> pd.DataFrame:
    """One row per tuned setting of ``record`` that the run holds cells of (``stored``: the store's cell rows)."""
    scored = stored[(stored["status"] == "ok") & stored["psnr"].notna()].copy()
    scored["setting"] = scored["config"].map(setting_of)
    rows = []
    for entry in record["settings"]:
        if "tuned" not in entry:
            continue
        default = scored[scored["setting"] == entry["key"]]
        twin = scored[scored["setting"] == entry.get("tuned_key", entry["key"])]
        if default.empty or twin.empty:
            continue
        a, b = per_image(twin, images), per_image(default, images)
        common = a.index.intersection(b.index)
        gain, lo, hi, p = paired(a[common].to_numpy(), b[common].to_numpy()) if len(common) >= 2 else \
            (float(a.mean() - b.mean()), np.nan, np.nan, np.nan)
        first = default.iloc[0]
        defense = {k: v for k, v in entry["defense"].items() if k != "name"}
        rows.append({"attack": entry["attack"], "defense": entry["defense"]["name"],
                     "defense_params": json.dumps(defense, sort_keys=True),
                     "setting": entry["label"], "threat_model": first["threat_model"],
                     **_mean("default", default, images), **_mean("tuned", twin, images),
                     "gain": gain, "gain_lo": lo, "gain_hi": hi, "p": p, "images": len(common),
                     "tuned_params": ", ".join(f"{k}={_short(v)}" for k, v in entry["tuned"].items()),
                     "trials": entry.get("trials", 0), "attack_minutes": entry.get("attack_minutes", np.nan),
                     "data": entry.get("data", ""), "status": entry.get("status", "")})
    return pd.DataFrame(rows, columns=COLUMNS)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _mean(prefix: str, cells: pd.DataFrame, images: pd.DataFrame) -> dict:
    lo, hi = cell_interval(cells["cell"], images)
    return {f"{prefix}_psnr": float(cells["psnr"].mean()), f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def terminal(frame: pd.DataFrame) -> str:
    """The table as plain text."""
    view = pd.DataFrame({
        "setting": frame["setting"],
        "default PSNR [95 %]": [f"{m:.2f} {b}" for m, b in zip(frame["default_psnr"], intervals(frame, "default"),
                                                                strict=True)],
        "tuned PSNR [95 %]": [f"{m:.2f} {b}" for m, b in zip(frame["tuned_psnr"], intervals(frame, "tuned"),
                                                              strict=True)],
        "gain [95 %]": [f"{g:+.2f} {b}" for g, b in zip(frame["gain"], intervals(frame, "gain"), strict=True)],
        "p": frame["p"].map(lambda p: "" if pd.isna(p) else f"{p:.2g}"),
        "trials": frame["trials"], "minutes": frame["attack_minutes"].map("{:.1f}".format),
        "tuned": frame["tuned_params"]})
    return view.to_string(index=False)
