"""What changed between two runs, setting by setting (the question after every change).

Both runs are reduced to per-setting summaries as the regression gate makes them (``regress.summarize``: means over
seeds, PSNR clipped at 40 dB for chaotic attacks), joined on the setting, and each metric's change is compared with
run A's tolerance: ``changed`` marks a change the gate would not ignore. Settings found in one run only are listed
as such, and so are epsilon or bytes that differ.
"""

from __future__ import annotations

import math

import pandas as pd

from giabench.leaderboard import regress

METRICS = ("psnr", "ssim", "lpips", "exact", "label_acc")


def compare(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per setting of either run: A's and B's mean per metric, B - A, and what moved beyond tolerance."""
    sa, sb = regress.summarize(a), regress.summarize(b)
    merged = sa.merge(sb, on=regress.SETTING, how="outer", suffixes=("_a", "_b"), indicator=True)
    rows = []
    for _, row in merged.iterrows():
        out = {"setting": _name(row), "in": {"both": "both", "left_only": "A only",
                                                      "right_only": "B only"}[row["_merge"]]}
        moved = []
        for metric in METRICS:
            before, after = float(row[f"{metric}_mean_a"]), float(row[f"{metric}_mean_b"])
            out[f"{metric}_a"], out[f"{metric}_b"] = before, after
            out[f"{metric}_change"] = after - before
            tol = row[f"{metric}_tol_a"]
            if math.isfinite(before) and math.isfinite(after) and abs(after - before) > float(tol) + 1e-9:
                moved.append(metric)
        for cost in ("epsilon", "bytes"):
            out[f"{cost}_a"], out[f"{cost}_b"] = row[f"{cost}_a"], row[f"{cost}_b"]
            if row["_merge"] == "both" and not regress._same_cost(cost, row[f"{cost}_a"], row[f"{cost}_b"]):
                moved.append(cost)
        out["changed"] = ", ".join(moved)
        rows.append(out)
    table = pd.DataFrame(rows)
    order = table["psnr_change"].abs().fillna(-1)
    return table.assign(_order=order).sort_values(["changed", "_order"], ascending=[False, False]) \
        .drop(columns="_order").reset_index(drop=True)


def _name(row) -> str:
    from giabench.leaderboard.report import label

    return (f"{label('attacks', row['attack'], row['attack_params'])} vs "
            f"{label('defenses', row['defense'], row['defense_params'])} on "
            f"{label('models', row['model'], row['model_params'])}/{row['dataset']} "
            f"{label('protocols', row['protocol'], row['protocol_params'])} B={row['batch_size']}")


def terminal(table: pd.DataFrame) -> str:
    def pair(metric: str, digits: int) -> list[str]:
        return [f"{_n(a, digits)} -> {_n(b, digits)}" for a, b in zip(table[f"{metric}_a"], table[f"{metric}_b"],
                                                                       strict=True)]

    view = pd.DataFrame({"setting": table["setting"], "in": table["in"], "PSNR": pair("psnr", 2),
                         "SSIM": pair("ssim", 3), "LPIPS": pair("lpips", 3), "exact": pair("exact", 2),
                         "label": pair("label_acc", 2), "changed": table["changed"]})
    width = int(view["setting"].str.len().max()) if len(view) else 0
    return view.to_string(index=False, formatters={"setting": lambda text: text.ljust(width)})


def _n(value, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
