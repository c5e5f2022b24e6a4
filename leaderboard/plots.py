"""Plots for the report as inline SVG: privacy against utility, each defense's frontier, PSNR against epsilon, leakage
per round of a federated app's run, and an objective sparkline.

Text is drawn as glyph paths (matplotlib's ``svg.fonttype = "path"``), so names from a run never reach the page as
markup. Matplotlib renders off-screen (Agg); nothing is shown or downloaded.
"""

from __future__ import annotations

import io
import math

import pandas as pd

FONT = 11


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "font.size": FONT, "axes.titlesize": FONT + 1})
    return plt, *plt.subplots(figsize=(width, height))


def _svg(plt, fig) -> str:
    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside the HTML


def privacy_utility(points: pd.DataFrame) -> str | None:
    """Worst-case PSNR (y) against test accuracy (x), one labelled point per defense setting; ``points`` has columns
    label, accuracy, psnr, group."""
    points = points.dropna(subset=["accuracy", "psnr"])
    if points.empty:
        return None
    plt, fig, ax = _figure(7.5, 4.8)
    for group, part in points.groupby("group", sort=False):
        ax.scatter(part["accuracy"], part["psnr"], s=36, label=group)
        for _, row in part.iterrows():
            ax.annotate(row["label"], (row["accuracy"], row["psnr"]), xytext=(4, 3), textcoords="offset points",
                        fontsize=FONT - 1)
    return _finish(plt, fig, ax, "test accuracy after federated training (giabench utility)",
                   "worst-case PSNR over attacks (dB)", "Privacy against utility: lower and further right is better")


#: the axes a frontier plot may draw: (axis label, log scale)
FRONTIER_AXES = {"accuracy": ("test accuracy, training tuned on the validation split", False),
                 "psnr": ("worst-case PSNR over attacks (dB)", False),
                 "epsilon_training": ("epsilon composed over the training run (log)", True)}


def frontiers(table: pd.DataFrame, x: str, y: str, title: str) -> str | None:
    """Each defense's frontier (``giabench.leaderboard.frontiers``), ``y`` against ``x`` (``FRONTIER_AXES``), one line
    per frontier through its points weakest to strongest, its undefended point hollow and dashed to the first point
    (on an epsilon axis only the DP points are drawn: the undefended point has none)."""
    if table.empty or x not in table or y not in table:
        return None
    points = table.dropna(subset=[x, y])
    for column in (x, y):
        if FRONTIER_AXES[column][1]:
            points = points.loc[[math.isfinite(e) and e > 0 for e in points[column]]] if len(points) else points
    lines = [(key, part.sort_values("order")) for key, part in points.groupby(["defense", "frontier"], sort=False,
                                                                              dropna=False)
             if (part["order"] >= 0).sum() >= 2]
    if not lines:
        return None
    plt, fig, ax = _figure(7.5, 4.8)
    for (defense, rest), part in lines:
        on_axis, clear = part[part["order"] >= 0], part[part["order"] < 0]
        rest = rest if isinstance(rest, str) else ""
        line, = ax.plot(on_axis[x], on_axis[y], marker="o", label=f"{defense}{f' ({rest})' if rest else ''}: "
                                                                  f"{on_axis['point'].iloc[0]} ... "
                                                                  f"{on_axis['point'].iloc[-1]}")
        if len(clear):
            ax.plot([clear[x].iloc[0], on_axis[x].iloc[0]], [clear[y].iloc[0], on_axis[y].iloc[0]], linestyle="--",
                    linewidth=1, color=line.get_color())
            ax.scatter(clear[x], clear[y], s=60, facecolors="none", edgecolors=line.get_color())
    for column, scale in ((x, ax.set_xscale), (y, ax.set_yscale)):
        if FRONTIER_AXES[column][1]:
            scale("log")
    return _finish(plt, fig, ax, FRONTIER_AXES[x][0], FRONTIER_AXES[y][0], title)


def psnr_epsilon(points: pd.DataFrame) -> str | None:
    """Mean PSNR (y) against epsilon (x, log scale) for DP defenses, one line per (attack, defense, group); the
    undefended PSNR of the same attack as a dashed line. ``points``: attack, defense, group, epsilon, psnr, kind
    ("dp" or "none")."""
    dp = points[(points["kind"] == "dp") & points["epsilon"].map(lambda e: math.isfinite(e) and e > 0)]
    if dp.empty:
        return None
    plt, fig, ax = _figure(7.5, 4.8)
    for (attack, defense, group), part in dp.groupby(["attack", "defense", "group"], sort=False):
        part = part.sort_values("epsilon")
        line, = ax.plot(part["epsilon"], part["psnr"], marker="o", label=f"{attack} vs {defense} ({group})")
        clear = points[(points["kind"] == "none") & (points["attack"] == attack) & (points["group"] == group)]
        if len(clear):
            ax.axhline(float(clear["psnr"].iloc[0]), color=line.get_color(), linestyle="--", linewidth=1)
    ax.set_xscale("log")
    return _finish(plt, fig, ax, "epsilon (composed over the client's releases; dashed: no defense)",
                   "mean PSNR over seeds (dB)", "Leakage against the privacy budget")


def leakage(curves: pd.DataFrame, by: str, xlabel: str, title: str,
            ylabel: str = "worst-case mean PSNR over the battery (dB)") -> str | None:
    """Worst-case PSNR (or the leakage ``ylabel`` names) over the attacks (y) against ``by`` (x, log scale), one line
    per defense setting; ``curves`` has columns defense_key, ``by``, leakage."""
    if curves.empty:
        return None
    plt, fig, ax = _figure(7.5, 4.8)
    for defense, part in curves.groupby("defense_key", sort=False):
        part = part.sort_values(by)
        ax.plot(part[by], part["leakage"], marker="o", label=defense)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(curves[by].unique()), [str(v) for v in sorted(curves[by].unique())])
    return _finish(plt, fig, ax, xlabel, ylabel, title)


def per_round(rounds: pd.DataFrame) -> str | None:
    """PSNR (y) against the training round (x), one line per (attack, client, defense) of a federated app's run;
    ``rounds``: round, client, attack, defense, psnr (unscored cells left out)."""
    scored = rounds.dropna(subset=["psnr"])
    if scored.empty:
        return None
    plt, fig, ax = _figure(7.5, 4.8)
    for (attack, client, defense), part in scored.groupby(["attack", "client", "defense"], sort=True):
        part = part.sort_values("round")
        ax.plot(part["round"], part["psnr"], marker="o", label=f"{attack} on client {client} ({defense})")
    ax.set_xticks(sorted(scored["round"].unique()))
    return _finish(plt, fig, ax, "training round", "PSNR of the attacked update (dB)", "Leakage per round")


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str) -> str:
    """Labels, a light grid and the legend under the axes (one entry a line, the figure grown to hold it); the SVG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    entries = len(ax.get_legend_handles_labels()[0])
    fig.set_figheight(fig.get_figheight() + 0.22 * entries)
    ax.legend(fontsize=FONT - 1, loc="upper left", bbox_to_anchor=(0, -0.16), frameon=False)
    return _svg(plt, fig)


def sparkline(values: list[float], width: int = 160, height: int = 36) -> str:
    """A polyline of ``values`` (log scale when all are positive), first value left; no axes."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return ""
    logs = all(v > 0 for v in finite)
    ys = [math.log10(v) if logs else v for v in finite]
    low, high = min(ys), max(ys)
    span = (high - low) or 1.0
    points = " ".join(f"{i * (width - 2) / (len(ys) - 1) + 1:.1f},{height - 1 - (y - low) / span * (height - 2):.1f}"
                      for i, y in enumerate(ys))
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="objective along the run"><polyline fill="none" stroke="#2a6fb0" stroke-width="1.5" '
            f'points="{points}"/></svg>')
