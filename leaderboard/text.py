"""The text settings of a run: ROUGE and token accuracy per setting, reconstructed sentences beside the private ones.

A text cell (``giabench.text_metrics``) has one image row per private sequence with its text, the text matched to it
and that pair's ROUGE-1, ROUGE-2 and token accuracy. Per setting, the mean ROUGE-1 over its sequences gets the 95 %
percentile interval of a bootstrap that resamples whole cells (``tables.cell_interval``).
"""

from __future__ import annotations

import pandas as pd

from giabench.leaderboard import gallery
from giabench.leaderboard.tables import SETTING, cell_interval

TEXT_METRICS = ["rouge1", "rouge2", "token_acc"]


def text_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells scored as text: those with a ROUGE-1 figure."""
    return frame[pd.to_numeric(frame["rouge1"], errors="coerce").notna()] if "rouge1" in frame else frame.iloc[:0]


def table(frame: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Per text setting: mean ROUGE-1 (with its 95 % interval), ROUGE-2, token accuracy, exact sequences per cell,
    seconds per cell, the cost, and how many cells and sequences; highest ROUGE-1 first."""
    cells = text_cells(frame)
    if cells.empty:
        return pd.DataFrame()
    grouped = cells.groupby(SETTING, dropna=False, sort=False)
    out = grouped[[*TEXT_METRICS, "exact", "wall_s", "epsilon", "bytes"]].mean()
    bounds = grouped["cell"].apply(lambda ids: cell_interval(ids, images, "rouge1"))
    out["rouge1_lo"], out["rouge1_hi"] = [b[0] for b in bounds], [b[1] for b in bounds]
    out["adjacency"] = grouped["adjacency"].first()
    out["cells"] = grouped.size()
    out["sequences"] = grouped["batch_size"].sum()
    return out.reset_index().sort_values("rouge1", ascending=False, kind="stable").reset_index(drop=True)


def examples(frame: pd.DataFrame, images: pd.DataFrame, settings: pd.DataFrame) -> list[dict]:
    """For each row of ``settings``, the text gallery: its best, median and worst reconstructed sequence by ROUGE-1
    over all its cells (as the image galleries pick by PSNR), each beside its private sentence, with its seed."""
    cells = text_cells(frame)
    shown = []
    for _, setting in settings.iterrows():
        mine = cells
        for key in SETTING:
            mine = mine[mine[key].astype(str) == str(setting[key])]
        if mine.empty or "text" not in images:
            continue
        rows = images[images["cell"].isin(mine["cell"])].merge(mine[["cell", "seed"]], on="cell")
        picked = gallery.picks(rows, "rouge1")
        pairs = [{"name": name, "seed": int(r["seed"]), "truth": r["text"], "rouge1": r["rouge1"],
                  "guess": r["text_pred"] if isinstance(r["text_pred"], str) else ""} for name, r in picked]
        if pairs:
            shown.append({"setting": setting, "pairs": pairs})
    return shown
