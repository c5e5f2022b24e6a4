"""A static, self-contained HTML leaderboard: the ranking, then every cell with its reconstruction grid inline.

Every string from the run (names, parameters, paths) is HTML-escaped; images are embedded as base64 PNG data so the
page is one file. Clicking a column header sorts the table by it.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from giabench.leaderboard import tables
from giabench.leaderboard.tables import ranking

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#f0f0f0;cursor:pointer;user-select:none}
td.t{text-align:left}
img{image-rendering:pixelated;height:80px}
img.plot{image-rendering:auto;height:480px}
"""
_SORT = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
    var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v ?? a.cells[col].textContent;
      var y = b.cells[col].dataset.v ?? b.cells[col].textContent;
      var fx = parseFloat(x), fy = parseFloat(y);
      if (!isNaN(fx) && !isNaN(fy)) return dir * (fx - fy);
      return dir * x.localeCompare(y);
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def _cell(value, fmt: str = "{:.3f}") -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return '<td data-v="NaN">n/a</td>'
        text = "inf" if math.isinf(value) else fmt.format(value)
        return f'<td data-v="{value}">{html.escape(text)}</td>'
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return f'<td data-v="{value}">{value}</td>'
    return f'<td class="t">{html.escape(str(value))}</td>'


HEADERS = {"iterations": "budget (update evaluations)"}


def _table(frame: pd.DataFrame, columns: list[str], extra=None) -> str:
    head = "".join(f"<th>{html.escape(HEADERS.get(c, c))}</th>" for c in columns)
    head += f"<th>{extra[0]}</th>" if extra else ""
    rows = []
    for _, row in frame.iterrows():
        cells = "".join(_cell(row[c]) for c in columns)
        if extra:
            cells += f'<td class="t">{extra[1](row)}</td>'
        rows.append(f"<tr>{cells}</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _image(run_dir: Path, relative: str, alt: str = "originals (top) and reconstructions (bottom)") -> str:
    path = (run_dir / str(relative)).resolve()
    if not path.is_file() or run_dir.resolve() not in path.parents:
        return "missing"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write(frame: pd.DataFrame, run_dir: str | Path, path: str | Path, title: str = "giabench leaderboard",
          tradeoff: pd.DataFrame | None = None) -> None:
    run_dir = Path(run_dir)
    rank = ranking(frame)
    rank.insert(0, "rank", rank.index)
    summary = _table(rank, ["rank", "attack", "attack_params", "defense", "defense_params", "dataset", "model",
                            "protocol", "batch_size", "threat_model", "psnr", "ssim", "lpips", "iterations", "exact",
                            "label_acc", "epsilon", "delta", "adjacency", "bytes", "cells"])
    detail = _table(frame, ["attack", "defense", "defense_params", "dataset", "model", "protocol", "batch_size",
                            "seed", "psnr", "ssim", "lpips", "iterations", "label_acc", "wall_s", "epsilon", "status",
                            "note", "cell"],
                    extra=("originals / reconstructions", lambda row: _image(run_dir, row["image"])))
    labels = tables.label_track(frame)
    label_html = _table(labels, ["attack", "attack_params", "defense", "defense_params", "dataset", "model",
                                 "model_params", "batch_size", "repeats", "label_acc", "label_set_acc", "cells"]) \
        if len(labels) else "<p>none</p>"
    source = html.escape(str(frame["lpips_source"].iloc[0])) if len(frame) else ""
    trade_html = ""
    if tradeoff is not None:
        plot = _image(run_dir, "privacy_utility.png", "privacy against utility").replace("<img", '<img class="plot"')
        columns = ["defense", "defense_params", "dataset", "model", "batch_size", "attack", "psnr", "ssim", "lpips",
                   "accuracy", "bytes_per_round", "wall_per_round_s", "epsilon_training", "delta_training",
                   "adjacency_training", "epsilon_release"]
        trade_html = f"<h2>Privacy against utility (worst-case attack per defense setting)</h2>{plot}" \
                     f"{_table(tradeoff, columns)}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(frame)} cells. PSNR and SSIM: higher means more leakage; LPIPS-alex: lower means more leakage
({source}). A cell whose attack's preconditions fail is "not-applicable" (the note says why), never a
privacy score. Epsilon is composed over everything the client released, at the delta and adjacency beside it
(add-remove or replace-one of a record); inf for defenses without a DP guarantee. Click a header to sort.</p>
<h2>Ranking (mean over seeds)</h2>{summary}
{trade_html}
<h2>Label inference (label_acc: label counts; label_set_acc: which classes are present)</h2>{label_html}
<h2>Cells</h2>{detail}
<script>{_SORT}</script></body></html>"""
    Path(path).write_text(page, encoding="utf-8")
