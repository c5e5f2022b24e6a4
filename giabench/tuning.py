"""Tune each attack's hyperparameters per setting, on data its threat model grants, never on the private batches.

A *setting* is a suite's cell without its seed. For every setting whose attack declares a search space
(``Attack.search_space``), Optuna's TPE proposes parameters; a trial runs the setting on ``batches`` tuning batches
(cells with seeds ``TUNING_SEED + k``: neither the victim's initialization, the defense's noise nor the attack's start
repeats a private cell's) and scores it by ``OBJECTIVES``: the mean PSNR of its reconstructions, each clipped at
``EXACT_DB`` (above it a reconstruction is exact, and the digits between are convergence noise), or their mean SSIM,
or minus their mean LPIPS (which, unlike PSNR, does not reward a blurred guess near the noise floor). The tuning
batches come from

- the cell's dataset, where the threat model grants surrogate data of the client's distribution (D and up);
- else a public stand-in of the same image shape (``STAND_INS``, or the caller's ``stand_in``), labels taken modulo
  the victim's class count (``giabench.data.pool``);

and in both cases without any image of the suite's private batches of that dataset. The default parameters are scored
on the same batches first; the tuned parameters are the best of the default and the trials (ties go to the default),
so tuning never loses on its own data. Trial cells run through the executors as a suite's cells do (``workers``, Ray),
one trial per unfinished setting at a time, into the store ``OUT/trials``; the studies live in
``OUT/study/optuna.journal``, held by one process at a time.
Each proposal comes from a sampler seeded by (seed, setting, trials finished), so a killed tuning resumes to the same
trials: a trial that was running is failed in the journal and asked again with the same parameters, its finished
cells found in the store. The record (``giabench.tuned``) goes to ``OUT/tuned.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from giabench import components, data, runner, search, threats, tuned
from giabench.errors import ConfigError, GiabenchError
from giabench.metrics import EXACT_DB
from giabench.store import Store, exclusive
from giabench.suite import Cell, Suite

TUNING_SEED = 10_000  # trial cells use seeds TUNING_SEED + k; a suite's own seeds must stay below it
TRIALS = 20
BATCHES = 2
#: a public dataset of the same image shape for each embedded or full dataset: what a B or C attacker tunes on
STAND_INS = {"cifar10-sample": "cifar100-sample", "cifar10": "cifar100-sample", "cifar100-sample": "cifar10-sample",
             "cifar100": "cifar10-sample", "mnist-5k": "fmnist-sample", "mnist-sample": "fmnist-sample",
             "mnist": "fmnist-sample", "fmnist-sample": "mnist-sample", "fashion-mnist": "mnist-sample",
             "natural-patches": "cifar100-sample"}


@dataclass
class Setting:
    """The suite's cells of one setting, the attack's search space and the pool its trials draw batches from."""

    cells: list[Cell]
    space: dict[str, search.Dimension]
    pool: dict  # {"dataset": config, "exclude": [indices]} (``runner.client_data``)
    data: str  # which data the trials ran on, for the record

    @property
    def key(self) -> str:
        return self.cells[0].setting

    @property
    def first(self) -> Cell:
        return self.cells[0]

    def cells_for(self, params: dict, batches: int) -> list[Cell]:
        """The trial cells of ``params``: the setting on tuning batches 0 .. batches-1."""
        attack = components.from_config("attack", {**self.first.attack.config, **params})
        return [replace(self.first, attack=attack, seed=TUNING_SEED + k,
                        context={**self.first.context, "pool": self.pool}) for k in range(batches)]


def settings(loaded: Suite, env: runner.Environment, attacks: set[str] | None = None,
             stand_in: str | None = None) -> tuple[list[Setting], list[dict]]:
    """The settings of ``loaded`` to tune, and a record entry for each one left untuned (no search space)."""
    if any(cell.seed >= TUNING_SEED for cell in loaded.cells):
        raise ConfigError(f"suite {loaded.name}: seeds must stay below {TUNING_SEED}, which tuning trials use")
    private: dict[str, set[int]] = {}
    for cell in loaded.cells:
        imageset = runner.load_dataset(cell.dataset, env)
        index = data.sample_index(imageset, cell.batch_size, cell.seed, cell.selection)
        private.setdefault(_key(cell.dataset.config), set()).update(index.tolist())
    grouped: dict[str, list[Cell]] = {}
    for cell in loaded.cells:
        if attacks is None or cell.attack.name in attacks:
            grouped.setdefault(cell.setting, []).append(cell)
    chosen, skipped = [], []
    for cells in grouped.values():
        first = cells[0]
        space = first.attack.factory.search_space(runner.load_dataset(first.dataset, env).shape)
        if not space:
            skipped.append({**_entry(cells), "status": f"not tuned: attack {first.attack.name} declares no search "
                                                       "space"})
            continue
        search.check(f"attack {first.attack.name}", space, first.attack.factory.parameters)
        pool, described = _pool(first, private, env, stand_in)
        chosen.append(Setting(cells, space, pool, described))
    return chosen, skipped


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _pool(cell: Cell, private: dict[str, set[int]], env: runner.Environment, stand_in: str | None) -> tuple[dict, str]:
    """Where the setting's trials draw their batches, and that said in one line."""
    if threats.grants(cell.threat_model, "surrogate-data"):
        source, kind = cell.dataset.config, "surrogate"
    else:
        name = stand_in or STAND_INS.get(cell.dataset.name)
        if name is None:
            raise ConfigError(f"threat model {cell.threat_model} grants {cell.attack.name} no surrogate data and "
                              f"{cell.dataset.name} has no public stand-in: pass --stand-in DATASET (images of "
                              "the same shape)")
        source, kind = components.from_config("dataset", {"name": name}).config, "public stand-in"
    exclude = sorted(private.get(_key(source), set()))
    victim = runner.load_dataset(cell.dataset, env)
    images = data.pool(runner.load_dataset(components.from_config("dataset", source), env), exclude, victim)
    aside = f", the suite's {len(exclude)} private ones set aside" if exclude else ""
    relabelled = "" if kind == "surrogate" else f", labels modulo {victim.num_classes}"
    return {"dataset": source, "exclude": exclude}, f"{kind} {source['name']} ({len(images)} images{aside}{relabelled})"


def _entry(cells: list[Cell]) -> dict:
    first = cells[0]
    return {"key": first.setting, "label": first.label.rsplit(" seed=", 1)[0], "attack": first.attack.name,
            "defense": first.defense.config, "seeds": [cell.seed for cell in cells]}


#: what a trial maximizes, from its cells' rows: (the metric, how a row's value enters)
OBJECTIVES = {"psnr": ("psnr", lambda v: v.clip(upper=EXACT_DB)), "ssim": ("ssim", lambda v: v),
              "lpips": ("lpips", lambda v: -v)}


def objective(rows: pd.DataFrame, name: str = "psnr") -> tuple[float | None, str]:
    """A trial's score from its cells' rows (``OBJECTIVES[name]``, averaged); None and the reason where a cell failed,
    was not applicable or has no such score (no image, LPIPS unavailable)."""
    metric, enters = OBJECTIVES[name]
    bad = rows[(rows["status"] != "ok") | rows[metric].isna()]
    if len(bad):
        first = bad.iloc[0]
        why = f"{first['status']}: {first['note']}" if first["note"] else str(first["status"])
        return None, why if first["status"] != "ok" else f"no {metric} score"
    return float(enters(rows[metric]).mean()), ""


def tune(loaded: Suite, out: Path, env: runner.Environment, trials: int = TRIALS, batches: int = BATCHES,
         seed: int = 0, attacks: set[str] | None = None, stand_in: str | None = None, workers: int = 1,
         executor: str = "local", address: str | None = None, quiet: bool = False, score: str = "psnr") -> dict:
    """Tune every setting of ``loaded`` (see the module docstring) and write the record ``out/tuned.json``."""
    import optuna

    if trials < 1 or batches < 1:
        raise GiabenchError(f"--trials and --batches must be >= 1, got {trials} and {batches}")
    if score not in OBJECTIVES:
        raise GiabenchError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {score!r}")
    start = time.perf_counter()
    chosen, skipped = settings(loaded, env, attacks, stand_in)
    try:
        (out / "study").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GiabenchError(f"{out}: cannot create the tuning folder ({exc.strerror})") from None
    with exclusive(out / "study"):
        record = _tune(optuna, loaded, out, env, chosen, trials, batches, seed, workers, executor, address, quiet,
                       score)
    record["settings"] += skipped
    record["wall_minutes"] = _previous_minutes(out) + (time.perf_counter() - start) / 60
    target = out / tuned.RECORD
    target.with_suffix(".tmp").write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    target.with_suffix(".tmp").replace(target)
    return record


def _tune(optuna, loaded: Suite, out: Path, env: runner.Environment, chosen: list[Setting], trials: int,
          batches: int, seed: int, workers: int, executor: str, address: str | None, quiet: bool, score: str) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    journal = optuna.storages.journal.JournalFileBackend(str(out / "study" / "optuna.journal"))
    storage = optuna.storages.JournalStorage(journal)
    trial_store = out / "trials"
    name = f"{loaded.name} (tuning)"
    source = f"tune:{loaded.source}"

    def run(cells: list[Cell]) -> pd.DataFrame:
        """Run ``cells``; every trial cell stored so far (this round's and all before), by id."""
        runner.run_suite(Suite(name, "tuning trials", cells, source), trial_store, env, workers,
                         show_progress=not quiet, executor=executor, address=address)
        return Store(trial_store).cells().set_index("cell")

    defaults = {s.key: s.cells_for({}, batches) for s in chosen}
    rows = run([c for cells in defaults.values() for c in cells]) if chosen else None
    scored = {s.key: objective(rows.loc[[c.id for c in defaults[s.key]]], score) for s in chosen}
    active = [s for s in chosen if scored[s.key][0] is not None]
    for s in active:
        study = optuna.create_study(study_name=s.key, storage=storage, direction="maximize", load_if_exists=True)
        _same_plan(study, {"batches": batches, "seed": seed, "objective": score}, out)
        _requeue_stale(study)
    while True:
        asked = []
        for s in active:
            study = _study(optuna, storage, s.key, seed, trials)
            if _finished(study) < trials:
                trial = study.ask({k: search.distribution(d) for k, d in s.space.items()})
                asked.append((study, trial, s.cells_for(trial.params, batches)))
        if not asked:
            break
        rows = run([c for _, _, cells in asked for c in cells])
        for study, trial, cells in asked:
            value, why = objective(rows.loc[[c.id for c in cells]], score)
            trial.set_user_attr("cells", [c.id for c in cells])
            if value is None:
                trial.set_user_attr("failed", why)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, value)
    entries = [_record(s, scored[s.key], rows, defaults[s.key],
                       _study(optuna, storage, s.key, seed, trials) if s in active else None) for s in chosen]
    return {"format": tuned.FORMAT, "suite": loaded.name, "source": loaded.source, "trials": trials,
            "batches": batches, "seed": seed, "objective": score, "tuning_seed": TUNING_SEED, "numerics": env.numerics,
            "settings": entries}


def _study(optuna, storage, key: str, seed: int, trials: int):
    """The setting's study with a sampler seeded by (seed, setting, trials finished so far)."""
    study = optuna.load_study(study_name=key, storage=storage)
    digest = hashlib.sha256(f"{seed}:{key}:{_finished(study)}".encode()).digest()
    study.sampler = optuna.samplers.TPESampler(seed=int.from_bytes(digest[:4], "big"), multivariate=True,
                                               n_startup_trials=max(1, min(10, trials // 2)))
    return study


def _same_plan(study, plan: dict, out: Path) -> None:
    """Record the study's batches and seed; refuse to go on under others (its trials would not compare)."""
    for key, value in plan.items():
        held = study.user_attrs.get(key)
        if held is None:
            study.set_user_attr(key, value)
        elif held != value:
            raise GiabenchError(f"{out} tuned with --{key} {held}; this run asks for {value}: use the same, or "
                                "another --out")


def _finished(study) -> int:
    """Trials that ran to an end (scored, or failed by their cells), not those a killed run left running."""
    return sum("cells" in t.user_attrs for t in study.get_trials(deepcopy=False))


def _requeue_stale(study) -> None:
    """Fail the trials a killed run left running and ask their parameters again next."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)


def _previous_minutes(out: Path) -> float:
    try:
        return float(tuned.load(out)["wall_minutes"])
    except (ConfigError, KeyError, TypeError, ValueError):
        return 0.0


def _record(setting: Setting, default: tuple[float | None, str], rows: pd.DataFrame, default_cells: list[Cell],
            study) -> dict:
    """The record entry of one setting: its space, data, default and tuned parameters and scores, and its cost."""
    searched = {k: setting.first.attack.params[k] for k in setting.space}
    entry = {**_entry(setting.cells), "space": {k: d.describe() for k, d in setting.space.items()},
             "data": setting.data, "default": searched, "default_value": default[0]}
    spent = [c.id for c in default_cells]
    if study is None:
        return {**entry, "status": f"not tuned: the default parameters give no score on the tuning batches "
                                   f"({default[1]})", "attack_minutes": _minutes(rows, spent)}
    done = [t for t in study.get_trials(deepcopy=False) if "cells" in t.user_attrs]
    spent += [c for t in done for c in t.user_attrs["cells"]]
    scored = [t for t in done if t.value is not None and math.isfinite(t.value)]
    best = max(scored, key=lambda t: (t.value, -t.number), default=None)
    wins = best is not None and best.value > default[0]
    params = dict(best.params) if wins else searched
    twin = replace(setting.first, attack=components.from_config("attack", {**setting.first.attack.config, **params}))
    return {**entry, "tuned": params, "tuned_key": twin.setting,
            "tuned_value": best.value if wins else default[0], "best_trial": best.number if wins else None,
            "trials": len(done), "failed_trials": len(done) - len(scored),
            "status": "tuned" if wins else "kept default (no trial beat it)", "attack_minutes": _minutes(rows, spent)}


def _minutes(rows: pd.DataFrame, cells: list[str]) -> float:
    return float(rows.loc[rows.index.intersection(cells), "wall_s"].fillna(0).sum()) / 60
