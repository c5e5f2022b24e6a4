"""Each defense's privacy-utility frontier: its worst-case leakage and its accuracy at every point of its strength axis.

A *frontier* is a defense's settings that differ only along its strength axis (``Client.strength``; a suite or a
utility file sweeps it with ``sweep: true``), at least two of them. At each point the worst case is the highest mean
PSNR over the attack settings (attack, dataset, model, protocol, batch size) that ran at *every* point of the frontier,
so that the points compare like with like; the undefended point is the same maximum over those attack settings without
a defense. Accuracy, epsilon composed over the training run and the training hyperparameters chosen on the validation
split come from the utility run's row of the same setting.
"""

from __future__ import annotations

import json

import pandas as pd

from giabench.errors import GiabenchError
from giabench.leaderboard.tables import cell_interval
from giabench.registry import defenses

ATTACK = ["attack", "attack_params", "dataset", "model", "model_params", "protocol", "protocol_params", "batch_size"]
COLUMNS = ["defense", "frontier", "point", "order", "psnr", "psnr_lo", "psnr_hi", "attack", "attack_params", "attacks",
           "accuracy", "epsilon_training", "adjacency", "tuned"]
FILE = "frontiers.csv"


def table(cells: pd.DataFrame, images: pd.DataFrame, utility: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per point of every frontier in ``cells`` (the run's cell rows), its undefended point first."""
    scored = cells[(cells["status"] == "ok") & cells["psnr"].notna()]
    rows = []
    for (name, rest), part in _frontiers(scored).items():
        axis = defenses.get(name).strength
        rest = _changed(name, json.loads(rest))
        points = sorted(part["defense_params"].unique(), key=lambda p: _order(axis, json.loads(p)))
        means = part.groupby(["defense_params", *ATTACK], sort=False)["psnr"].mean().reset_index()
        common = means.groupby(ATTACK, sort=False)["defense_params"].nunique()
        common = common[common == len(points)].reset_index()[ATTACK]
        if common.empty:
            continue
        clear = scored[scored["defense"] == "none"].merge(common, on=ATTACK)
        if len(clear):
            rows.append({**_worst(clear, images), "defense": name, "frontier": rest, "point": "no defense",
                         "order": -1, "attacks": len(common), **_utility(utility, "none", "{}")})
        for params in points:
            here = part[part["defense_params"] == params].merge(common, on=ATTACK)
            rows.append({**_worst(here, images), "defense": name, "frontier": rest,
                         "point": axis.label(json.loads(params)), "order": _order(axis, json.loads(params)),
                         "attacks": len(common), **_utility(utility, name, params)})
    return pd.DataFrame(rows, columns=COLUMNS)


def _frontiers(scored: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Cells of each (defense, its parameters off the axis) with at least two points on the axis."""
    groups: dict[tuple[str, str], pd.DataFrame] = {}
    for name, part in scored.groupby("defense", sort=False):
        try:
            axis = defenses.get(name).strength
        except GiabenchError:  # a defense whose package is not installed here
            continue
        if axis is None:
            continue
        rest = part["defense_params"].map(lambda p, axis=axis: _off_axis(axis, p))
        for key, frontier in part.groupby(rest, sort=False):
            if frontier["defense_params"].nunique() >= 2:
                groups[(name, key)] = frontier
    return groups


def _off_axis(axis, params: str) -> str:
    """A setting's parameters that do not move along ``axis``, as canonical JSON."""
    moving = {k for point in axis.points for k in point}
    return json.dumps({k: v for k, v in json.loads(params).items() if k not in moving}, sort_keys=True)


def _changed(name: str, params: dict) -> str:
    """The frontier's parameters off the axis that differ from the defense's defaults (``k=v, ...``)."""
    defaults = defenses.defaults(name)
    return ", ".join(f"{k}={v}" for k, v in params.items() if defaults.get(k) != v)


def _order(axis, params: dict) -> float:
    """The point's place on the axis: its index among the declared points, else between them by the first moving
    value's rank (a swept value the defense does not declare)."""
    for i, point in enumerate(axis.points):
        if all(params.get(k) == v for k, v in point.items()):
            return float(i)
    first = next(iter(axis.points[0]))
    values = [point[first] for point in axis.points]
    rising = values[-1] > values[0]
    return float(sum((v < params.get(first)) if rising else (v > params.get(first)) for v in values)) - 0.5


def _worst(cells: pd.DataFrame, images: pd.DataFrame) -> dict:
    """The attack setting of highest mean PSNR among ``cells``, with its 95 % interval."""
    means = cells.groupby(ATTACK, sort=False)["psnr"].mean()
    top = means.idxmax()
    chosen = cells[(cells[ATTACK] == pd.Series(top, index=ATTACK)).all(axis=1)]
    lo, hi = cell_interval(chosen["cell"], images)
    return {"psnr": float(means.max()), "psnr_lo": lo, "psnr_hi": hi, "attack": top[0], "attack_params": top[1]}


def _utility(utility: pd.DataFrame | None, name: str, params: str) -> dict:
    if utility is None or utility.empty:
        return {}
    row = utility[(utility["defense"] == name) & (utility["defense_params"] == params)]
    if row.empty:
        return {}
    first = row.iloc[0]
    return {"accuracy": first["accuracy"], "epsilon_training": first["epsilon"],
            "adjacency": first.get("adjacency", ""), "tuned": first.get("tuned", "")}
