"""The report section "giabench against the published record": per reproduction row the paper's figure, ours with
its 95 % interval, the verdict and what explains a gap, then each reproduction's reconstructions (best, median and
worst by PSNR) beside their originals. Autoescaped Jinja2; images inline, so the page is one file."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader

from giabench.errors import GiabenchError
from giabench.leaderboard import gallery
from giabench.leaderboard.report import number
from giabench.store import Store

SECTION = "giabench against the published record"


def ours_text(record: dict) -> str:
    """Our value with its interval ("-" where the row has no value of ours)."""
    value = record.get("ours")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    lo, hi = record.get("lo"), record.get("hi")
    interval = "" if lo is None or pd.isna(lo) else f" [{number(lo)}, {number(hi)}]"
    return f"{number(value)}{interval}"


def verdict_class(verdict: str) -> str:
    if verdict.startswith(("reproduced", "consistent")):
        return "ok"
    if verdict.startswith(("not run", "above")):
        return "idle"
    return "gap"


def reconstructions(run_dir: Path) -> list[tuple[str, str, str, str]]:
    """(label, original, reconstruction, caption) for the best, median and worst image of a run folder."""
    try:
        store = Store(run_dir, create=False)
        cells, images = store.cells(), store.images()
    except GiabenchError:
        return []
    grids = cells[cells["status"] == "ok"][["cell", "image", "batch_size", "attack", "defense"]]
    rows = images.merge(grids.rename(columns={"image": "grid"}), on="cell")
    tiles = []
    for name, pick in gallery.picks(rows):
        pair = gallery.pair(run_dir, pick["grid"], int(pick["batch_size"]), int(pick["image"]))
        if pair:
            tiles.append((name, *pair, f"{pick['attack']} / {pick['defense']}, B={int(pick['batch_size'])}: "
                                       f"{number(pick['psnr'], 2)} dB"))
    return tiles


def markdown(frame: pd.DataFrame) -> str:
    """The table as the README carries it: one line per row, where and when it was measured."""
    lines = ["| id | figure | published | ours [95 %] | verdict | measured on |", "|---|---|---|---|---|---|"]
    for r in frame.to_dict("records"):
        place = "" if pd.isna(r.get("hardware")) else \
            f"{r['hardware']}, {int(r['threads'])} thread(s), {'' if pd.isna(r['measured_at']) else r['measured_at']}"
        cells = [r["id"], f"{r['figure']} ({r['metric']})", number(r["published"]), ours_text(r), str(r["verdict"]),
                 place or "-"]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write(frame: pd.DataFrame, out: Path, path: Path) -> None:
    """Render the reproduction table ``frame`` (``giabench reproduce``'s rows) and the reconstructions of every run
    folder it judged to ``path``."""
    rows = [{**r, "ours_text": ours_text(r), "published_text": number(r["published"]),
             "class": verdict_class(str(r["verdict"])),
             **{k: "" if pd.isna(r[k]) else r[k] for k in ("explanation", "hardware", "measured_at", "n")}}
            for r in frame.to_dict("records")]
    galleries = []
    for (ident, budget), _ in frame.groupby(["id", "budget"], sort=True):
        tiles = reconstructions(out / f"{ident}-{budget}")
        if tiles:
            galleries.append((f"{ident} ({budget} budget)", tiles))
    environment = Environment(loader=PackageLoader("giabench.leaderboard", "templates"), autoescape=True)
    page = environment.get_template("published.html.j2").render(title=SECTION, rows=rows, galleries=galleries)
    path.write_text(page, encoding="utf-8")
