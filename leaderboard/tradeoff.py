"""Privacy against utility: each defense setting's strongest attack beside its utility row.

For every (defense setting, dataset, model, batch size) the attack with the highest mean PSNR over seeds is the
privacy score (worst case over the attacks run); not-applicable cells do not count. It is joined on (defense,
defense_params, dataset, model) with the rows of ``giabench utility`` (accuracy, uplink bytes and time per round, and
the epsilon of that training run, composed over all its rounds): a utility row measured on other data or another
architecture says nothing about these cells, so they stay without accuracy. The plot puts accuracy on x and the
worst-case PSNR on y, one point per defense setting (``giabench.leaderboard.plots.privacy_utility``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from giabench.errors import GiabenchError
from giabench.utility_config import UTILITY_COLUMNS

GROUP = ["defense", "defense_params", "dataset", "model", "batch_size"]
NUMERIC = ["accuracy", "bytes_per_round", "wall_per_round_s", "epsilon", "delta", "clients", "rounds", "batch"]
JOIN = ["defense", "defense_params", "dataset", "model"]


def read_utility(path: str | Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise GiabenchError(f"utility table {path}: no such file (write one with giabench utility)")
    try:
        frame = pd.read_csv(path, dtype={"defense_params": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise GiabenchError(f"utility table {path}: not a CSV file ({type(exc).__name__})") from exc
    missing = [c for c in UTILITY_COLUMNS if c not in frame.columns]
    if missing:
        raise GiabenchError(f"utility table {path}: missing column {missing[0]!r}")
    for column in NUMERIC:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            row = int(bad.idxmax())
            raise GiabenchError(f"utility table {path}: row {row + 2}, column {column!r}: expected a number, got "
                                f"{frame.loc[row, column]!r}")
        frame[column] = values
    return frame


def table(cells: pd.DataFrame, utility: pd.DataFrame) -> pd.DataFrame:
    scored = cells[(cells["status"] != "not-applicable") & cells["psnr"].notna()]
    per_attack = scored.groupby(GROUP + ["attack", "attack_params"], dropna=False)[
        ["psnr", "ssim", "lpips", "epsilon", "bytes"]].mean().reset_index()
    if per_attack.empty:
        return per_attack
    best = per_attack.loc[per_attack.groupby(GROUP, dropna=False)["psnr"].idxmax()]
    best = best.rename(columns={"epsilon": "epsilon_release", "bytes": "bytes_attacked_model"})
    util = utility[JOIN + ["accuracy", "bytes_per_round", "wall_per_round_s", "epsilon", "delta", "adjacency"]]
    util = util.rename(columns={"epsilon": "epsilon_training", "delta": "delta_training",
                                "adjacency": "adjacency_training"})
    return best.merge(util, on=JOIN, how="left").sort_values(GROUP).reset_index(drop=True)
