"""Run cells: play one federated round under the defense, hand the attacker the server's view, score the result.

Every random draw comes from a ``torch.Generator`` seeded from the cell's seed (batch choice, model init, the defense's
fresh noise, the attack's initialization), and every cell runs under pinned numerics (``giabench.numerics``: thread
count, device, dtype), the same in-process and in worker processes, so a cell gives the same numbers whenever it runs
on the same hardware with the same settings. A run folder holds cells of one numerics setting only.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from giabench import __version__, components, data, executors, metrics, numerics, text_metrics, threats
from giabench.components import Component, build_model
from giabench.contracts import Reconstruction, ServerView
from giabench.errors import ConfigError, GiabenchError, NotApplicable, first_line
from giabench.images import image_grid
from giabench.progress import Board, Reporter, reported
from giabench.registry import datasets
from giabench.store import Store, exclusive
from giabench.suite import Cell, Suite

Result = tuple[dict, list[dict], np.ndarray | None]  # a cell's row, its per-image rows, its image grid (or None)


@dataclass(frozen=True)
class Environment:
    """Where a cell runs. None of this changes a cell's identity; ``device``, ``threads`` and ``dtype`` are its
    numerics settings, stored with its row."""

    device: str = "cpu"
    data_root: str = ""
    download: bool = False
    threads: int = 1
    dtype: str = "float32"

    @property
    def numerics(self) -> dict:
        return numerics.settings(self.device, self.threads, self.dtype)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}")
    return name


def load_dataset(dataset: Component, env: Environment) -> data.ImageSet:
    """The cell's dataset; a real dataset's ``root`` and ``download`` default to the environment's."""
    params = dict(dataset.params)
    if not dataset.name.startswith("folder:") and "root" in datasets.defaults(dataset.name):
        params["root"] = params.get("root") or env.data_root
        params["download"] = params.get("download") or env.download
    return data.load(dataset.name, **params)


def client_data(cell: Cell, env: Environment) -> tuple[data.ImageSet, data.ImageSet]:
    """The cell's dataset (the victim's classes, normalization and training data) and the set its client's batch is
    drawn from: the same, except in a tuning trial, whose context names a ``pool`` (``giabench.tuning``): a dataset
    config and the indices of it set aside (the private batches)."""
    imageset = load_dataset(cell.dataset, env)
    spec = cell.context.get("pool")
    if spec is None:
        return imageset, imageset
    source = components.from_config("dataset", spec["dataset"])
    return imageset, data.pool(load_dataset(source, env), spec["exclude"], imageset)


def _seeded(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + stream)


def validate(cells: list[Cell], env: Environment) -> None:
    """Check every cell, beyond what its suite checked, before the first one runs: its dataset loads and holds its
    batch, its model builds for that data (and loads its checkpoint). Errors name the suite file and the line of the
    offending field."""
    built = set()
    for cell in cells:
        try:
            imageset, batches = client_data(cell, env)
        except ConfigError as exc:
            raise ConfigError(f"{cell.at('dataset', exc.field)}: {exc}") from None
        for kind in ("model", "attack", "defense"):
            component = getattr(cell, kind)
            served = getattr(component.factory, "modalities", ("image",))
            if imageset.modality not in served:
                raise ConfigError(f"{cell.at(kind)}: {kind} {component.name} works on {' and '.join(served)} data; "
                                  f"dataset {cell.dataset.name} holds {imageset.modality}")
        try:
            data.sample_index(batches, cell.batch_size, cell.seed, cell.selection)
        except ConfigError as exc:
            raise ConfigError(f"{cell.at('batch_size')}: {exc}") from None
        key = json.dumps([cell.dataset.config, cell.model.config], sort_keys=True)
        if key not in built:
            built.add(key)
            state = cell.model.params["state"]
            try:  # trained:N is built untrained here: its training runs once, in the first cell that needs it
                build_model(cell.model, imageset, 0, "untrained" if state.startswith("trained:") else state)
            except ConfigError as exc:
                raise ConfigError(f"{cell.at('model', exc.field)}: {exc}") from None
            except RuntimeError as exc:  # an architecture that cannot take these images
                raise ConfigError(f"{cell.at('model')}: model {cell.model.name} cannot take "
                                  f"{cell.dataset.name} images ({first_line(exc)})") from None


@dataclass
class Outcome:
    """What attacking one message gave: ``status`` ok or not-applicable (with the reason in ``note``), the
    reconstruction, what the attack reported (``extra``), its wall time and the defended client's cost."""

    cost: dict
    status: str = "ok"
    note: str = ""
    reconstruction: Reconstruction | None = None
    extra: dict = field(default_factory=dict)
    wall_s: float = 0.0

    @classmethod
    def not_applicable(cls, reason: str, cost: dict, details: dict | None = None, wall_s: float = 0.0) -> Outcome:
        return cls(cost, "not-applicable", reason, extra=details or {}, wall_s=wall_s)


def run_cell(cell: Cell, env: Environment, progress: Reporter | None = None) -> Result:
    """Run one cell under its pinned numerics; returns its result row, its per-image rows and the image grid
    (H x W x C uint8). ``progress`` hears the attack's planned budget, then its steps."""
    with numerics.pinned(env.device, env.threads, env.dtype):
        return _run_cell(cell, env, progress)


def _run_cell(cell: Cell, env: Environment, progress: Reporter | None) -> Result:
    seed = cell.seed
    device = torch.device(env.device)
    imageset, batches = client_data(cell, env)
    index = data.sample_index(batches, cell.batch_size, seed, cell.selection)
    x, y = batches.images[index].to(device), batches.labels[index].to(device)
    if x.dtype.is_floating_point:  # images in the cell's dtype (token ids stay ids)
        x = x.to(torch.get_default_dtype())
    model = build_model(cell.model, imageset, seed).to(device)
    texts = getattr(imageset, "texts", None)
    others = surrogate(batches, index) if threats.grants(cell.threat_model, "surrogate-data") else None
    attacker = cell.attack.build()
    if progress:
        progress.begin(attacker.planned_budget())
    refused = None
    try:
        model = attacker.prepare(model, imageset.shape, others, _seeded(seed, 3), cell.batch_size)
    except NotApplicable as exc:
        refused = exc
    protocol = cell.protocol.build(model)
    client = cell.defense.build(protocol)
    message = client.share(x, y, _seeded(seed, 1))
    if refused is not None:
        return result_row(cell, env, Outcome.not_applicable(str(refused), client.cost(), refused.details), (x, y),
                          texts)
    statistics = None
    if threats.grants(cell.threat_model, "bn-statistics"):
        with torch.no_grad():
            statistics = protocol.batch_statistics(x)
    labels = y.detach().cpu() if threats.grants(cell.threat_model, "labels") else None
    view = ServerView(model, protocol, message, dict(client.public), imageset.shape, imageset.num_classes,
                      x.shape[0], labels, others, statistics)
    outcome = attack_view(attacker, view, client, _seeded(seed, 2), progress.advance if progress else None)
    return result_row(cell, env, outcome, (x, y), texts)


def attack_view(attacker, view: ServerView, client, generator: torch.Generator, progress=None) -> Outcome:
    """Run ``attacker`` on ``view``; an attack that finds the message not applicable gives status
    ``not-applicable`` with its reason."""
    start = time.perf_counter()
    try:
        recon = attacker.reconstruct(view, client.simulate, generator, progress)
    except NotApplicable as exc:
        return Outcome.not_applicable(str(exc), client.cost(), exc.details, time.perf_counter() - start)
    wall = time.perf_counter() - start
    if recon.images is not None and not torch.isfinite(recon.images).all():
        raise FloatingPointError("the attack returned NaN or infinite pixels")
    return Outcome(client.cost(), reconstruction=recon, extra=recon.extra, wall_s=wall)


def result_row(cell: Cell, env: Environment, outcome: Outcome,
               batch: tuple[torch.Tensor, torch.Tensor] | None, texts=None) -> Result:
    """A finished cell's row, per-image rows and image grid, scored against the private ``batch``. Without it (a
    server that does not know it) the reconstructions are kept unscored: NaN metrics, the grid's top row blank.
    ``texts``: for token sequences, the dataset's decoder; they are scored as text (``giabench.text_metrics``), one
    row per sequence with both texts, and make no grid."""
    recon = outcome.reconstruction
    if batch is not None and texts is not None:
        x, y = batch
        summary, image_rows, _ = text_metrics.score(recon.images if recon else None, recon.labels if recon else None,
                                                    x, y, texts)
        grid, distinct = None, len(set(y.tolist()))
    elif batch is None:
        summary = {k: math.nan for k in ("psnr", "ssim", "lpips", "mse", "label_acc", "label_set_acc")}
        summary.update(exact=None, lpips_source="unscored")
        image_rows, shown = [], recon.images.cpu() if recon and recon.images is not None else None
        grid = image_grid(torch.ones_like(shown), shown) if shown is not None else None
        distinct = None
    else:
        x, y = batch
        if recon is None:
            summary, image_rows, order = metrics.score(None, None, x, y)
            summary["lpips_source"] = "not applicable"
        else:
            summary, image_rows, order = metrics.score(recon.images, recon.labels, x, y, recovered=recon.recovered)
        shown = recon.images[order].cpu() if recon and recon.images is not None else torch.ones_like(x.cpu())
        grid, distinct = image_grid(x.cpu(), shown), len(set(y.tolist()))
    cost = outcome.cost
    row = {
        **identity(cell, env), "distinct_labels": distinct,
        **{k: summary[k] for k in ("psnr", "ssim", "lpips", "mse", "label_acc", "label_set_acc", "exact")},
        **{k: summary.get(k, math.nan) for k in text_metrics.TEXT_METRICS},
        "lpips_source": summary["lpips_source"], "iterations": recon.iterations if recon else 0,
        "wall_s": outcome.wall_s, "status": outcome.status, "note": outcome.note, "extra": outcome.extra,
        "trace": [float(v) for v in recon.trace] if recon else [],
        "epsilon": cost["epsilon"], "delta": cost["delta"], "adjacency": cost["adjacency"], "bytes": cost["bytes"],
    }
    return row, image_rows, grid


def identity(cell: Cell, env: Environment) -> dict:
    """The columns that say which cell a row is and how it was computed."""
    return {
        "cell": cell.id, "attack": cell.attack.name, "defense": cell.defense.name, "dataset": cell.dataset.name,
        "model": cell.model.name, "protocol": cell.protocol.name, "batch_size": cell.batch_size, "seed": cell.seed,
        "selection": cell.selection, "threat_model": cell.threat_model,
        "attack_params": cell.attack.params, "defense_params": cell.defense.params,
        "model_params": cell.model.params, "protocol_params": cell.protocol.params,
        **env.numerics, "hardware": numerics.hardware(env.device),
        "versions": {"giabench": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "config": cell.config,
    }


def failed_result(cell: Cell, env: Environment, exc: BaseException) -> Result:
    """The result of a cell that raised: status ``failed``, the exception's type and first line as the note."""
    reason = f"{type(exc).__name__}: {first_line(exc)}"
    return {**identity(cell, env), "status": "failed", "note": reason.rstrip(": ")}, [], None


def run_cell_safely(cell: Cell, env: Environment, progress: Reporter | None = None) -> Result:
    """``run_cell``, with any failure inside the cell (an attack that raises, diverges to NaN, runs out of memory)
    turned into a result with status ``failed`` and the reason, so the suite goes on."""
    try:
        return run_cell(cell, env, progress)
    except Exception as exc:  # noqa: BLE001 -- one cell's failure is recorded, never the suite's end
        return failed_result(cell, env, exc)


def store_result(store: Store, out: Path, suite_name: str, cell: Cell, result: Result) -> None:
    """Write a finished cell's image grid under ``out/images`` and its row (stamped with the suite and the time) and
    per-image rows into ``store``."""
    row, images, grid = result
    if grid is not None:
        try:
            Image.fromarray(grid).save(out / "images" / f"{cell.id}.png")
        except OSError as exc:
            raise GiabenchError(f"{out}: cannot write the image of cell {cell.id} ({exc.strerror}); the cells stored "
                                "before it are intact: free space, then rerun to resume") from None
    row.update(suite=suite_name, image=f"images/{cell.id}.png" if grid is not None else "",
               finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    store.write(row, images)


def surrogate(imageset: data.ImageSet, private: torch.Tensor) -> torch.Tensor:
    """The dataset's images other than the client's batch: the attacker's surrogate data (threat model D and up)."""
    keep = torch.ones(len(imageset), dtype=torch.bool)
    keep[private] = False
    return imageset.images[keep]


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={settings.get(k)}" for k in ("device", "threads", "dtype"))


def run_suite(suite: Suite, out: str | Path, env: Environment, workers: int = 1, show_progress: bool = True,
              retry_failed: bool = False, executor: str = "local", address: str | None = None) -> Store:
    """Run every cell of ``suite`` that ``out`` does not hold yet; each is stored as it finishes. The folder is held
    by this process, belongs to one suite and one numerics setting; every cell to run is validated before the first
    starts; a cell that fails is stored as ``failed`` and the suite goes on (``retry_failed`` runs those again).
    ``executor``: ``local`` (in-process, or ``workers`` spawned processes) or ``ray`` (a task per cell on the Ray
    cluster at ``address``, a local one when None). Whatever runs the cells, this driver alone writes the store.
    Ctrl-C (KeyboardInterrupt) stops the workers and leaves every finished cell stored."""
    out = Path(out)
    store = Store(out)
    with exclusive(out):
        _claim(out, suite, store, env)
        if retry_failed:
            store.forget("failed")
        done = store.finished()
        todo = [c for c in suite.cells if c.id not in done]
        validate(todo, env)
        board = Board(len(suite.cells), len(suite.cells) - len(todo), f"suite {suite.name}", show_progress)
        shown = board if show_progress else None

        def finish(cell: Cell, result: Result) -> None:
            store_result(store, out, suite.name, cell, result)
            board.finished()

        try:
            if executor == "ray":
                executors.on_ray(todo, run_cell_safely, env, address, finish, shown)
            elif workers <= 1:
                for cell in todo:
                    finish(cell, reported(run_cell_safely, cell, env, shown and shown.handle, every=0.0))
            else:
                executors.in_pool(todo, run_cell_safely, env, workers, finish, shown)
        finally:
            board.close()
    return store


def _claim(out: Path, suite: Suite, store: Store, env: Environment) -> None:
    """A run folder holds one suite (by its source: a packaged name or a file's path) under one numerics setting;
    ``suite.json`` records which (rewritten only when it changes, so a finished run in a read-only folder resumes)."""
    stored = store.numerics()
    if stored and stored != [env.numerics]:
        found = "; ".join(_describe(n) for n in stored)
        raise GiabenchError(f"{out} holds cells computed with {found}; this run would use {_describe(env.numerics)}. "
                            "Results under other numerics are other measurements: rerun with the same --threads, "
                            "--dtype and --device, or use another --out")
    source = str(Path(suite.source).resolve()) if Path(suite.source).is_file() else suite.source
    record = out / "suite.json"
    previous = _read_json(record)
    if stored and previous and previous.get("origin", source) != source:
        raise GiabenchError(f"{out} holds suite {previous.get('name')!r} from {previous.get('origin')}; this is suite "
                            f"{suite.name!r} from {source}: use another --out")
    text = json.dumps({"name": suite.name, "description": suite.description, "source": suite.source,
                       "origin": source, "cells": [c.id for c in suite.cells]}, indent=1)
    if not record.is_file() or record.read_text(encoding="utf-8") != text:
        try:
            record.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise GiabenchError(f"{record}: cannot write it ({exc.strerror})") from None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
