"""Leakage per training round of a run recorded inside a federated app (the Flower integration): one row per attacked
update, (round, client, attack), with its scores, giabench's epsilon composed over the client's releases so far and
the epsilon the client's own accountant reported (Opacus') beside it."""

from __future__ import annotations

import json
import math

import pandas as pd

COLUMNS = ["round", "client", "attack", "attack_params", "defense", "defense_params", "batch_size", "status", "psnr",
           "ssim", "lpips", "label_acc", "epsilon", "client_epsilon", "delta", "adjacency", "bytes", "lpips_source",
           "cell", "note"]


def _json(text) -> dict:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def table(stored: pd.DataFrame) -> pd.DataFrame:
    """The rounds table of the store's cells (``Store.cells()``; its config and extra columns), by round then client;
    empty when no cell came from a federated app."""
    configs = [_json(c).get("flower") for c in stored.get("config", [])]
    keep = [isinstance(c, dict) and "round" in c and "client" in c for c in configs]
    if not any(keep):
        return pd.DataFrame(columns=COLUMNS)
    rows = stored[keep].copy()
    rows["round"] = [int(c["round"]) for c, k in zip(configs, keep, strict=True) if k]
    rows["client"] = [int(c["client"]) for c, k in zip(configs, keep, strict=True) if k]
    rows["client_epsilon"] = [float(_json(e).get("client_epsilon", math.nan)) for e in rows["extra"]]
    rows["epsilon"] = rows["epsilon"].astype(float)
    return rows[COLUMNS].sort_values(["round", "client", "attack"], kind="stable").reset_index(drop=True)
