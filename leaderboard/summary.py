"""The answer a reader of the report came for: one row per defense setting, its worst case over every attack family.

For each defense setting (a defense and its parameters) the image-reconstruction setting with the highest mean PSNR
over seeds is its worst case, whatever the attack, dataset, model or batch size: the row names that attack and
where it ran, its mean PSNR, and the fraction of its images reconstructed above ``LEAK_DB`` (25 dB). Beside it the
defense's cost: epsilon of the attacked update (largest over the setting's cells) with its delta and adjacency, the
bytes of that update, and, when a utility run trained under the same setting, its test accuracy and the epsilon
composed over all its rounds. Rows run from most to least leakage; label-only attacks (no images) do not enter, and
neither do cells that were not applicable or failed.
"""

from __future__ import annotations

import pandas as pd

from giabench.leaderboard.tables import short
from giabench.metrics import LEAK_DB

SETTING = ["attack", "attack_params", "dataset", "model", "model_params", "protocol", "protocol_params", "batch_size"]
DEFENSE = ["defense", "defense_params"]
COLUMNS = [*DEFENSE, "attack", "attack_params", "dataset", "model", "batch_size", "psnr", "above", "images",
           "seeds", "epsilon", "delta", "adjacency", "bytes", "accuracy", "epsilon_training"]


def defense_summary(cells: pd.DataFrame, images: pd.DataFrame, utility: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per defense setting (columns ``COLUMNS``), most leakage first; ``images``: the per-image scores of
    the run, ``utility``: rows of ``giabench utility`` (optional)."""
    scored = cells[(cells["status"] == "ok") & cells["psnr"].notna()]
    if scored.empty:
        return pd.DataFrame(columns=COLUMNS)
    means = scored.groupby(DEFENSE + SETTING, dropna=False, sort=False).agg(
        psnr=("psnr", "mean"), seeds=("cell", "size"), bytes=("bytes", "first")).reset_index()
    worst = means.loc[means.groupby(DEFENSE, dropna=False, sort=False)["psnr"].idxmax()]
    per_image = images.set_index("cell")["psnr"]
    rows = []
    for _, row in worst.iterrows():
        part = scored[(scored[DEFENSE + SETTING] == row[DEFENSE + SETTING]).all(axis=1)]
        shown = per_image[per_image.index.isin(part["cell"])]
        defended = cells[(cells["defense"] == row["defense"]) & (cells["defense_params"] == row["defense_params"])
                         & (cells["status"] == "ok")]
        costly = defended.loc[defended["epsilon"].astype(float).idxmax()]
        adjacency = costly["adjacency"] if isinstance(costly["adjacency"], str) else ""
        rows.append({**{k: row[k] for k in DEFENSE + ["attack", "attack_params", "dataset", "model", "batch_size",
                                                     "psnr", "seeds", "bytes"]},
                     "above": float((shown > LEAK_DB).mean()) if len(shown) else float("nan"),
                     "images": len(shown), "epsilon": float(costly["epsilon"]),
                     "adjacency": adjacency, "delta": costly["delta"] if adjacency else None})
    table = pd.DataFrame(rows)
    table = table.merge(_utility(utility), on=DEFENSE, how="left")
    return table.sort_values("psnr", ascending=False, kind="stable").reset_index(drop=True)[COLUMNS]


def _utility(utility: pd.DataFrame | None) -> pd.DataFrame:
    """Accuracy and training-run epsilon per defense setting (the first utility row of each)."""
    if utility is None or utility.empty:
        return pd.DataFrame(columns=[*DEFENSE, "accuracy", "epsilon_training"])
    util = utility.drop_duplicates(DEFENSE)[[*DEFENSE, "accuracy", "epsilon"]]
    return util.rename(columns={"epsilon": "epsilon_training"})


def terminal(table: pd.DataFrame) -> str:
    """The defense summary as plain text, most leakage first."""
    def cost(value, digits: int) -> str:
        return "" if pd.isna(value) else "inf" if value == float("inf") else f"{value:.{digits}f}"

    view = pd.DataFrame({
        "defense": [short("defenses", d, p) for d, p in zip(table["defense"], table["defense_params"], strict=True)],
        "worst attack": [short("attacks", a, p) for a, p in zip(table["attack"], table["attack_params"],
                                                                strict=True)],
        "on": table["dataset"] + "/" + table["model"] + " B=" + table["batch_size"].astype(str),
        "PSNR": table["psnr"].map("{:.2f}".format), "above 25 dB": table["above"].map("{:.0%}".format),
        "eps": table["epsilon"].map(lambda e: cost(e, 2)),
        "delta": table["delta"].map(lambda d: "" if pd.isna(d) else f"{d:g}"),
        "adjacency": table["adjacency"], "bytes": table["bytes"].astype(int),
        "accuracy": table["accuracy"].map(lambda a: cost(a, 3)),
        "eps (training)": table["epsilon_training"].map(lambda e: cost(e, 2))})
    return view.to_string(index=False)
