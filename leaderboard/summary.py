"""The answer a reader of the report came for: one row per defense setting, its worst case over every attack family.

For each defense setting (a defense and its parameters) the image-reconstruction setting with the highest mean PSNR
over seeds is its worst case, whatever the attack, dataset, model or batch size: the row names that attack and
where it ran, its mean PSNR, and the fraction of its images reconstructed above ``LEAK_DB`` (25 dB). Beside it the
defense's cost: epsilon of the attacked update (largest over the setting's cells) with its delta and adjacency, the
bytes of that update, and, when a utility run trained under the same setting, its test accuracy and the epsilon
composed over all its rounds. Rows run from most to least leakage; label-only attacks (no images) do not enter, and
neither do cells that were not applicable or failed.

Each mean PSNR carries its 95 % interval (a bootstrap over the setting's cells, their images resampled together) and
each share above 25 dB its Clopper-Pearson interval. ``versus_next`` says whether a row's worst case can be told
apart from the next row's: where both ran on the same private images (dataset, selection, batch size and seed), by a
paired Wilcoxon signed-rank test on the per-image PSNR (apart when p < 0.05); elsewhere only whether the two
intervals overlap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from giabench.intervals import clopper_pearson, cluster_bootstrap, paired
from giabench.leaderboard.tables import intervals, short
from giabench.metrics import LEAK_DB

SETTING = ["attack", "attack_params", "dataset", "model", "model_params", "protocol", "protocol_params", "batch_size"]
DEFENSE = ["defense", "defense_params"]
COLUMNS = [*DEFENSE, "attack", "attack_params", "dataset", "model", "batch_size", "psnr", "psnr_lo", "psnr_hi",
           "above", "above_lo", "above_hi", "images", "seeds", "versus_next", "epsilon", "delta", "adjacency", "bytes",
           "accuracy", "epsilon_training"]
SAME_IMAGES = ["dataset", "selection", "batch_size"]  # with the seed: the same private batch


def defense_summary(cells: pd.DataFrame, images: pd.DataFrame, utility: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per defense setting (columns ``COLUMNS``), most leakage first; ``images``: the per-image scores of
    the run, ``utility``: rows of ``giabench utility`` (optional)."""
    scored = cells[(cells["status"] == "ok") & cells["psnr"].notna()]
    if scored.empty:
        return pd.DataFrame(columns=COLUMNS)
    means = scored.groupby(DEFENSE + SETTING, dropna=False, sort=False).agg(
        psnr=("psnr", "mean"), seeds=("cell", "size"), bytes=("bytes", "first")).reset_index()
    worst = means.loc[means.groupby(DEFENSE, dropna=False, sort=False)["psnr"].idxmax()]
    by_cell = images.set_index("cell")["psnr"]
    rows, parts = [], []
    for _, row in worst.iterrows():
        part = scored[(scored[DEFENSE + SETTING] == row[DEFENSE + SETTING]).all(axis=1)]
        parts.append(part)
        shown = by_cell[by_cell.index.isin(part["cell"])]
        hits = int((shown > LEAK_DB).sum())
        defended = cells[(cells["defense"] == row["defense"]) & (cells["defense_params"] == row["defense_params"])
                         & (cells["status"] == "ok")]
        costly = defended.loc[defended["epsilon"].astype(float).idxmax()]
        adjacency = costly["adjacency"] if isinstance(costly["adjacency"], str) else ""
        psnr_lo, psnr_hi = cluster_bootstrap([shown[shown.index == c].to_numpy() for c in part["cell"]])
        above_lo, above_hi = clopper_pearson(hits, len(shown))
        rows.append({**{k: row[k] for k in DEFENSE + ["attack", "attack_params", "dataset", "model", "batch_size",
                                                     "psnr", "seeds", "bytes"]},
                     "psnr_lo": psnr_lo, "psnr_hi": psnr_hi,
                     "above": hits / len(shown) if len(shown) else float("nan"), "above_lo": above_lo,
                     "above_hi": above_hi, "images": len(shown), "epsilon": float(costly["epsilon"]),
                     "adjacency": adjacency, "delta": costly["delta"] if adjacency else None})
    table = pd.DataFrame(rows).assign(part=range(len(rows)))
    table = table.merge(_utility(utility), on=DEFENSE, how="left")
    table = table.sort_values("psnr", ascending=False, kind="stable").reset_index(drop=True)
    table["versus_next"] = [versus(table.iloc[i], table.iloc[i + 1], parts[table["part"].iloc[i]],
                                   parts[table["part"].iloc[i + 1]], images) if i + 1 < len(table) else ""
                            for i in range(len(table))]
    return table[COLUMNS]


def versus(row: pd.Series, following: pd.Series, part: pd.DataFrame, other: pd.DataFrame,
           images: pd.DataFrame) -> str:
    """Whether a worst case leaks more than the next row's, paired on the images both ran on."""
    a, b = per_image(part, images), per_image(other, images)
    common = a.index.intersection(b.index)
    if len(common) >= 2:
        diff, lo, hi, p = paired(a[common].to_numpy(), b[common].to_numpy())
        verdict = "apart" if p < 0.05 else "cannot be told apart"
        return f"{verdict}: {diff:+.2f} dB [{lo:+.2f}, {hi:+.2f}] on {len(common)} shared images, paired p {p:.2g}"
    if np.isnan([row["psnr_lo"], following["psnr_hi"]]).any():
        return "no interval (one image)"
    disjoint = row["psnr_lo"] > following["psnr_hi"] or following["psnr_lo"] > row["psnr_hi"]
    return f"different images; intervals {'are disjoint' if disjoint else 'overlap'}"


def per_image(part: pd.DataFrame, images: pd.DataFrame) -> pd.Series:
    """PSNR per private image, keyed by (dataset, selection, batch size, seed, slot)."""
    merged = images.merge(part[["cell", "seed", *SAME_IMAGES]], on="cell")
    return merged.groupby([*SAME_IMAGES, "seed", "image"])["psnr"].mean()


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
        "PSNR [95 %]": [f"{p:.2f} {bounds}".rstrip() for p, bounds in
                        zip(table["psnr"], intervals(table, "psnr"), strict=True)],
        "above 25 dB": table["above"].map("{:.0%}".format),
        "eps": table["epsilon"].map(lambda e: cost(e, 2)),
        "delta": table["delta"].map(lambda d: "" if pd.isna(d) else f"{d:g}"),
        "adjacency": table["adjacency"], "bytes": table["bytes"].astype(int),
        "accuracy": table["accuracy"].map(lambda a: cost(a, 3)),
        "eps (training)": table["epsilon_training"].map(lambda e: cost(e, 2))})
    apart = "\n".join(f"  {d} vs {n}: {v}" for d, n, v in zip(view["defense"], view["defense"].iloc[1:],
                                                              table["versus_next"], strict=False))
    return view.to_string(index=False) + ("\n\neach worst case against the next row's:\n" + apart if apart else "")
