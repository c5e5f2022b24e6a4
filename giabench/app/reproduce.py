"""``giabench reproduce``: run each paper's setting (``giabench/reproductions/ID.yaml``) and set the paper's figure
beside ours, with a verdict per row. Every reproduction runs into its own resumable run folder, OUT/ID-BUDGET; the
table (OUT/reproductions.csv, OUT/reproductions.html, OUT/reproductions.md as the README carries it, and the
terminal) covers every packaged reproduction: the ones
whose folder holds results are judged, the others say what they need and the command that runs them."""

from __future__ import annotations

import dataclasses
import sys
from datetime import date
from pathlib import Path

import pandas as pd

from giabench import reproduction, runner, utility
from giabench.app import commands
from giabench.errors import ConfigError, GiabenchError, first_line
from giabench.leaderboard import published
from giabench.reproduction import Reproduction, Variant
from giabench.store import DB_NAME, Store

COLUMNS = ["id", "figure", "paper", "where", "setting", "budget", "metric", "published", "ours", "lo", "hi",
           "n", "rule", "verdict", "explanation", "needs", "hardware", "threads", "measured_at", "wall_s", "command"]


def chosen(ids: list[str], packaged: list[Reproduction]) -> list[Reproduction]:
    """The reproductions named among the ``packaged`` ones, or files (``all`` or none: every packaged one)."""
    if not ids or ids == ["all"]:
        return packaged
    known = {rep.id: rep for rep in packaged}
    unknown = [i for i in ids if i not in known and not i.endswith((".yaml", ".yml"))]
    if unknown:
        raise GiabenchError(f"unknown reproduction {unknown[0]!r}; known: {', '.join(known)}")
    return [known[i] if i in known else reproduction.load(i) for i in ids]


def command_for(rep: Reproduction, variant: Variant) -> str:
    flags = " --device cuda" if "gpu" in variant.needs else ""
    if any(n.startswith("data:") for n in variant.needs):
        flags += " --data-root DIR"
    return f"giabench reproduce {rep.id} --budget {variant.budget}{flags}"


def listing(reps: list[Reproduction]) -> str:
    """``--list``: every row with the paper's needs and what runs on a CPU, without running anything."""
    lines = []
    for rep in reps:
        paper, cpu = rep.variant("paper"), rep.variants.get("cpu")
        here = f"cpu variant: {cpu.what}" if cpu else ("runs on a CPU" if set(paper.needs) <= {"cpu"}
                                                       else "paper setting only")
        lines.append(f"{rep.id}: {rep.title}\n  paper: {rep.paper}; {rep.figure['where']}\n"
                     f"  needs: {', '.join(paper.needs)}; {here}")
        for row in rep.rows:
            lines.append(f"    {row.figure}: {row.metric} {row.published:g} ({row.rule})")
    return "\n".join(lines)


def _unmet(variant: Variant, env: runner.Environment, check_data: bool) -> tuple[list[str], str]:
    """The variant's needs this machine lacks, with the first failure's message: a GPU, and (``check_data``: before
    running it) the data and weights its cells and utility runs load."""
    missing = reproduction.unmet(variant.needs, env.device)
    if missing or not check_data or not any(n.split(":")[0] in ("data", "weights") for n in variant.needs):
        return missing, ""
    try:
        if variant.suite is not None:
            runner.validate(variant.suite.cells, env)
        for cfg in _with_root(variant, env):
            utility.check_data(cfg)
    except ConfigError as exc:
        return [n for n in variant.needs if n.split(":")[0] in ("data", "weights")], first_line(exc)
    return [], ""


def _with_root(variant: Variant, env: runner.Environment) -> list:
    return [dataclasses.replace(cfg, data_root=env.data_root or cfg.data_root) for cfg in variant.utility]


def _folder(out: Path, rep: Reproduction, variant: Variant) -> Path:
    return out / f"{rep.id}-{variant.budget}"


def execute(rep: Reproduction, variant: Variant, out: Path, env: runner.Environment, workers: int,
            quiet: bool) -> None:
    folder = _folder(out, rep, variant)
    if variant.suite is not None and variant.suite.cells:
        runner.run_suite(variant.suite, folder, env, workers=workers, show_progress=not quiet)
    for cfg in _with_root(variant, env):
        utility.run_once(cfg, folder / "utility" / f"seed-{cfg.seed}", env.threads, not quiet)


def _utility_rows(folder: Path) -> pd.DataFrame | None:
    """The utility runs' rows, each with the date its file was written (``measured_at``)."""
    files = sorted((folder / "utility").glob("seed-*/utility.csv"))
    frames = [pd.read_csv(f).assign(measured_at=date.fromtimestamp(f.stat().st_mtime).isoformat()) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else None


def judged(rep: Reproduction, variant: Variant, out: Path, missing: list[str], why: str) -> list[dict]:
    """One table row per published figure of ``rep``: judged where its run folder holds results."""
    folder = _folder(out, rep, variant)
    cells, images = pd.DataFrame(), pd.DataFrame()
    if (folder / DB_NAME).is_file():
        store = Store(folder, create=False)
        cells, images = store.cells(), store.images()
    if not cells.empty:  # only this variant's cells: an edited file leaves its old cells in the folder
        cells = cells[cells["cell"].isin({c.id for c in variant.suite.cells} if variant.suite else set())]
    uses = _utility_rows(folder)
    setting = variant.what or "the paper's setting"
    if variant.data:
        setting += f"; data: {variant.data}"
    rows = []
    for row in rep.rows:
        base = {"id": rep.id, "figure": row.figure, "paper": rep.paper, "where": rep.figure.get("url", ""),
                "setting": setting, "budget": variant.budget, "metric": row.metric, "published": row.published,
                "rule": row.rule + (f" +/- {row.tolerance:g}" if row.tolerance else ""),
                "needs": ", ".join(variant.needs), "command": command_for(rep, variant)}
        ours = reproduction.measure(row, cells, images, uses)
        if ours is None:
            state = f"not run here: needs {', '.join(missing)}" if missing else "not run yet"
            rows.append({**base, "verdict": state, "explanation": why})
            continue
        verdict = reproduction.verdict(row, ours, variant.budget)
        explanation = row.difference if verdict.startswith("disagrees") else (
            row.reason if not verdict.startswith(("reproduced", "consistent")) else "")
        rows.append({**base, "ours": ours.value, "lo": ours.lo, "hi": ours.hi, "n": ours.n, "verdict": verdict,
                     "explanation": explanation, **_provenance(cells, uses)})
    return rows


def _provenance(cells: pd.DataFrame, uses: pd.DataFrame | None) -> dict:
    """Where and when the figures were measured: hardware, threads, the last finish time and the summed wall time."""
    if not cells.empty:
        return {"hardware": "; ".join(sorted(set(cells["hardware"].dropna()))), "threads": cells["threads"].max(),
                "measured_at": str(cells["finished_at"].max())[:10], "wall_s": float(cells["wall_s"].sum())}
    if uses is not None:
        return {"hardware": "; ".join(sorted(set(uses["hardware"].dropna()))), "threads": uses["threads"].max(),
                "measured_at": uses["measured_at"].max(),
                "wall_s": float((uses["wall_per_round_s"] * uses["rounds"]).sum())}
    return {}


def terminal(frame: pd.DataFrame) -> str:
    shown = frame.assign(ours=[published.ours_text(r) for r in frame.to_dict("records")])
    return shown[["id", "figure", "metric", "published", "ours", "verdict"]].to_string(index=False)


def run(ids: list[str], list_only: bool = False, out: str | None = None, budget: str = "paper", device: str = "cpu",
        threads: int = 1, workers: int = 1, data_root: str = "", download: bool = False, quiet: bool = False,
        dtype: str = "float32") -> int:
    """``giabench reproduce``."""
    packaged = reproduction.load_all()
    reps = chosen(ids, packaged)
    if list_only:
        print(listing(reps))
        return 0
    env = commands.environment(device, threads, workers, data_root=data_root, download=download, dtype=dtype)
    folder = commands.out_dir(out, Path("runs/reproduce"))
    requested = {rep.id for rep in reps}
    rows = []
    for rep in packaged + [r for r in reps if r.id not in {p.id for p in packaged}]:
        variant = rep.variant(budget)
        missing, why = _unmet(variant, env, check_data=rep.id in requested)
        if rep.id in requested and not missing:
            print(f"giabench: reproducing {rep.id} ({variant.budget} budget) into {_folder(folder, rep, variant)}",
                  file=sys.stderr)
            execute(rep, variant, folder, env, workers, quiet)
        rows += judged(rep, variant, folder, missing, why)
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "reproductions.csv", index=False, float_format="%.6g")
    published.write(frame, folder, folder / "reproductions.html")
    (folder / "reproductions.md").write_text(published.markdown(frame), encoding="utf-8")
    print(terminal(frame[frame["id"].isin(requested)]))
    print(f"\nwrote {folder / 'reproductions.csv'}, {folder / 'reproductions.html'} and {folder / 'reproductions.md'}")
    return 0
