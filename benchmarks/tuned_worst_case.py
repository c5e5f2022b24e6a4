"""How far tuning moves each defense's worst case: per defense setting of a ``giabench tune`` folder, the worst case
(highest mean PSNR over the attack settings) over the default attacks alone and over the default and tuned ones, both
on the private batches (seeds never used in tuning), with the cost of the tuning.

    giabench tune benchmarks/tune_default.yaml --attacks ig,gradinversion,gias --trials 12 --batches 2 --workers 2 \\
        --out runs/tune-default
    python benchmarks/tuned_worst_case.py runs/tune-default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from giabench import tuned
from giabench.leaderboard.tables import short
from giabench.leaderboard.tuning import setting_of
from giabench.store import Store


def worst_cases(folder: Path) -> pd.DataFrame:
    record = tuned.load(folder)
    twins = {s["tuned_key"] for s in record["settings"] if s.get("status") == "tuned"}
    cells = Store(folder, create=False).cells()
    cells = cells[(cells["status"] == "ok") & cells["psnr"].notna()].copy()
    cells["setting"] = cells["config"].map(setting_of)
    cells["tuned"] = cells["setting"].isin(twins)
    means = cells.groupby(["defense", "defense_params", "setting", "tuned", "attack", "attack_params", "model",
                           "dataset", "batch_size"], sort=False)["psnr"].mean().reset_index()
    rows = []
    for (defense, params), part in means.groupby(["defense", "defense_params"], sort=False):
        default, best = part[~part["tuned"]], part.loc[part["psnr"].idxmax()]
        top = default.loc[default["psnr"].idxmax()]
        rows.append({"defense": short("defenses", defense, params), "default worst case": round(top["psnr"], 2),
                     "by": f"{top['attack']} on {top['model']}/{top['dataset']} B={top['batch_size']}",
                     "with tuned": round(best["psnr"], 2), "moved (dB)": round(best["psnr"] - top["psnr"], 2),
                     "by (tuned)": short("attacks", best["attack"], best["attack_params"]) if best["tuned"] else "-"})
    return pd.DataFrame(rows).sort_values("moved (dB)", ascending=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a giabench tune folder (its evaluation run)")
    args = parser.parse_args()
    record = tuned.load(args.folder)
    settings = [s for s in record["settings"] if "tuned" in s]
    print(worst_cases(args.folder).to_string(index=False))
    won = sum(s["status"] == "tuned" for s in settings)
    print(f"\n{len(settings)} settings tuned, {won} beat their default on the tuning data; "
          f"{sum(s['trials'] for s in settings)} trials of {record['batches']} batches, "
          f"{sum(s['attack_minutes'] for s in settings):.1f} minutes of attack time, "
          f"{record['wall_minutes']:.1f} minutes of wall time ({json.dumps(record['numerics'])})")


if __name__ == "__main__":
    main()
