"""How far a suite's numbers move under other numerics: the measurement behind the regression gate's tolerances.

Runs a suite (default: smoke) once per numerics variant, each in its own process and run folder:
- ``reference``: 1 thread (what the gate runs);
- ``omp1``: 1 thread with OMP_NUM_THREADS=1 set at start-up (must equal the reference bit for bit);
- ``workers2``: 1 thread per cell in 2 worker processes (must equal the reference bit for bit);
- ``threads2``: 2 threads (reductions split differently);
- ``avx2``: torch, MKL and oneDNN capped at AVX2 kernels, as on an AVX2-only x86 CPU;
- ``sse``: torch's baseline kernels, MKL at SSE4.2 and oneDNN at SSE4.1, an old x86 CPU.
Then it summarizes each run per setting (``giabench.leaderboard.regress.summarize``) and prints, per variant:
whether every cell is identical to the reference, the gate's verdict on it against the reference summary, and for the
aggregate (chaotic) settings the largest |mean difference| per metric and the largest |difference| / (s / sqrt(n)),
the factor K the tolerance must exceed, the largest difference of the exact settings, and over all settings the
largest |difference| / tolerance (the gate fails above 1).

    .venv/bin/python benchmarks/gate_spread.py [--suite smoke] [--out runs/gate-spread] [--variants ...]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from giabench.leaderboard import regress, tables

VARIANTS = {
    "reference": ({}, ["--threads", "1"]),
    "omp1": ({"OMP_NUM_THREADS": "1"}, ["--threads", "1"]),
    "workers2": ({}, ["--threads", "1", "--workers", "2"]),
    "threads2": ({}, ["--threads", "2"]),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
             ["--threads", "1"]),
    "sse": ({"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
            ["--threads", "1"]),
}
METRICS = list(regress.LEAKS_MORE_WHEN_HIGHER)


def run(suite: str, out: Path, name: str) -> pd.DataFrame:
    env_vars, args = VARIANTS[name]
    folder = out / name
    if not (folder / "leaderboard.csv").is_file():
        command = [sys.executable, "-m", "giabench", "run", suite, "--out", str(folder), "--quiet", *args]
        subprocess.run(command, check=True, env={**os.environ, **env_vars}, stdout=subprocess.DEVNULL)
    return tables.cells(folder)


def spread(reference: pd.DataFrame, variant: pd.DataFrame) -> pd.DataFrame:
    """Per aggregate metric: the largest |mean difference| and |difference| / (s / sqrt(n)) over settings."""
    merged = reference.merge(variant, on=regress.SETTING, suffixes=("_ref", ""))
    rows = []
    for metric in METRICS:
        ref, now = merged[f"{metric}_mean_ref"], merged[f"{metric}_mean"]
        kinds = [regress._metric_judge(j, metric, p) for j, p in zip(merged["judge"], merged["attack_params"],
                                                                     strict=True)]
        chaotic = (pd.Series(kinds, index=merged.index) == "aggregate") & ref.notna()
        diff = (now - ref).abs()[chaotic]
        scale = (merged[f"{metric}_std_ref"] / merged[f"{metric}_n_ref"].clip(lower=1) ** 0.5)[chaotic]
        z = (diff / scale.where(scale > 0)).dropna()
        exact_diff = (now - ref).abs()[~chaotic & ref.notna()]
        tol = merged[f"{metric}_tol_ref"]
        of_tol = ((now - ref).abs() / tol.where(tol > 0))[ref.notna()].dropna()
        rows.append({"metric": metric, "aggregate_settings": int(chaotic.sum()),
                     "max_mean_diff": diff.max() if len(diff) else math.nan,
                     "max_diff_over_se": z.max() if len(z) else math.nan,
                     "exact_settings": len(exact_diff),
                     "exact_max_diff": exact_diff.max() if len(exact_diff) else math.nan,
                     "max_diff_over_tolerance": of_tol.max() if len(of_tol) else math.nan})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="smoke")
    parser.add_argument("--out", default="runs/gate-spread")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    out = Path(args.out)
    cells = {name: run(args.suite, out, name) for name in ["reference", *[v for v in args.variants
                                                                          if v != "reference"]]}
    summaries = {name: regress.summarize(frame) for name, frame in cells.items()}
    reference = summaries["reference"]
    pd.set_option("display.width", 200)
    for name, summary in summaries.items():
        if name == "reference":
            continue
        merged = cells["reference"].merge(cells[name], on="cell", suffixes=("_ref", ""))
        same = all((merged[f"{m}_ref"].fillna(-1) == merged[m].fillna(-1)).all() for m in METRICS)
        failures, notes = regress.compare(summary, reference)
        hardware = cells[name]["hardware"].iloc[0]
        print(f"\n== {name} ({hardware}, threads {cells[name]['threads'].iloc[0]}): {len(merged)} cells, "
              f"{'identical to' if same else 'different from'} the reference; gate: {len(failures)} failures, "
              f"{len(notes)} notes")
        for line in failures + notes:
            print(f"   {line}")
        print(spread(reference, summary).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
