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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from giabench import __version__, data, executors, metrics, models, numerics, protocols, threats
from giabench.contracts import ServerView
from giabench.errors import ConfigError, GiabenchError, NotApplicable, first_line
from giabench.images import image_grid
from giabench.registry import attacks, datasets, defenses
from giabench.store import Store, exclusive
from giabench.suite import Cell, Suite


@dataclass(frozen=True)
class Environment:
    """Where a cell runs. None of this changes a cell's identity; ``device`` and ``threads`` are its numerics settings,
    stored with its row."""

    device: str = "cpu"
    data_root: str = ""
    download: bool = False
    threads: int = 1

    @property
    def numerics(self) -> dict:
        return numerics.settings(self.device, self.threads)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}")
    return name


def _dataset(config: dict, env: Environment) -> data.ImageSet:
    params = component_params(config, "dataset")
    name = config["dataset"]["name"]
    if not name.startswith("folder:") and "root" in datasets.defaults(name):
        params["root"] = params.get("root") or env.data_root
        params["download"] = params.get("download") or env.download
    return data.load(name, **params)


def component_params(config: dict, component: str, *drop: str) -> dict:
    """A component's parameters without its name (and without ``drop``)."""
    return {k: v for k, v in config[component].items() if k not in ("name", *drop)}


def _seeded(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + stream)


def validate(cells: list[Cell], env: Environment) -> None:
    """Check every cell before the first one runs: its dataset loads and holds its batch, its model builds for that
    data (and loads its checkpoint), its defense serves its protocol and batch size. Errors name the suite file and
    the line of the offending field."""
    built = set()
    for cell in cells:
        c = cell.config
        try:
            imageset = _dataset(c, env)
        except ConfigError as exc:
            raise ConfigError(f"{cell.at('dataset', exc.field)}: {exc}") from None
        try:
            data.sample_index(imageset, c["batch_size"], c["seed"], c["selection"])
        except ConfigError as exc:
            raise ConfigError(f"{cell.at('batch_size')}: {exc}") from None
        key = json.dumps([c["dataset"], c["model"]], sort_keys=True)
        if key not in built:
            built.add(key)
            state = c["model"]["state"]
            try:  # trained:N is built untrained here: its training runs once, in the first cell that needs it
                models.build(c["model"]["name"], component_params(c, "model", "state", "mode"), imageset,
                             "untrained" if state.startswith("trained:") else state, 0)
            except ConfigError as exc:
                raise ConfigError(f"{cell.at('model', exc.field)}: {exc}") from None
            except RuntimeError as exc:  # an architecture that cannot take these images
                raise ConfigError(f"{cell.at('model')}: model {c['model']['name']} cannot take "
                                  f"{c['dataset']['name']} images ({first_line(exc)})") from None
        try:
            defenses.get(c["defense"]["name"]).check_cell(component_params(c, "defense"), c["protocol"]["name"],
                                                          c["batch_size"])
        except ConfigError as exc:
            raise ConfigError(f"{cell.at('defense', exc.field)}: {exc}") from None


def run_cell(cell: Cell, env: Environment, progress=None) -> tuple[dict, list[dict], np.ndarray]:
    """Run one cell under its pinned numerics; returns its result row, its per-image rows and the image grid
    (H x W x C uint8)."""
    with numerics.pinned(env.device, env.threads):
        return _run_cell(cell, env, progress)


def _run_cell(cell: Cell, env: Environment, progress) -> tuple[dict, list[dict], np.ndarray]:
    config, seed = cell.config, cell.config["seed"]
    device = torch.device(env.device)
    imageset = _dataset(config, env)
    index = data.sample_index(imageset, config["batch_size"], seed, config["selection"])
    x, y = imageset.images[index].to(device), imageset.labels[index].to(device)
    model_cfg = component_params(config, "model", "state", "mode")
    model = models.build(config["model"]["name"], model_cfg, imageset, config["model"]["state"], seed).to(device)
    model.train(config["model"]["mode"] == "train")
    threat = config["threat_model"]
    others = surrogate(imageset, index) if threats.grants(threat, "surrogate-data") else None
    attack_cfg = component_params(config, "attack")
    attacker = attacks.get(config["attack"]["name"])(**attack_cfg)
    status, note, recon, extra = "ok", "", None, {}
    try:
        model = attacker.prepare(model, imageset.shape, others, _seeded(seed, 3), config["batch_size"])
    except NotApplicable as exc:
        status, note, extra = "not-applicable", str(exc), exc.details
    protocol_cfg = component_params(config, "protocol")
    protocol = protocols.build(config["protocol"]["name"], protocol_cfg, model)
    defense_cfg = component_params(config, "defense")
    client = defenses.get(config["defense"]["name"])(protocol, **defense_cfg)
    message = client.share(x, y, _seeded(seed, 1))

    statistics = None
    if threats.grants(threat, "bn-statistics"):
        with torch.no_grad():
            statistics = protocol.batch_statistics(x)
    view = ServerView(model, protocol, message, dict(client.public), imageset.shape, imageset.num_classes,
                      x.shape[0], y.detach().cpu() if threats.grants(threat, "labels") else None, others, statistics)
    if status == "ok":
        status, note, recon, extra, wall = attack_view(attacker, view, client, _seeded(seed, 2), progress)
    else:
        wall = 0.0
    return result_row(cell, env, x, y, recon, status, note, extra, wall, client.cost())


def attack_view(attacker, view: ServerView, client, generator: torch.Generator, progress=None):
    """Run ``attacker`` on ``view``: (status, note, reconstruction or None, extra, seconds); an attack that finds the
    message not applicable gives status ``not-applicable`` with its reason."""
    start = time.perf_counter()
    try:
        recon = attacker.reconstruct(view, client.simulate, generator, progress)
        status, note, extra = "ok", "", recon.extra
    except NotApplicable as exc:
        status, note, recon, extra = "not-applicable", str(exc), None, exc.details
    wall = time.perf_counter() - start
    if recon is not None and recon.images is not None and not torch.isfinite(recon.images).all():
        raise FloatingPointError("the attack returned NaN or infinite pixels")
    return status, note, recon, extra, wall


def result_row(cell: Cell, env: Environment, x: torch.Tensor | None, y: torch.Tensor | None, recon, status: str,
               note: str, extra: dict, wall: float, cost: dict) -> tuple[dict, list[dict], np.ndarray]:
    """A finished cell's row, per-image rows and image grid. Without the private batch (``x`` None: a server that does
    not know it) the reconstructions are kept unscored: NaN metrics, the grid's top row blank."""
    if x is None:
        summary = {k: math.nan for k in ("psnr", "ssim", "lpips", "mse", "label_acc", "label_set_acc")}
        summary.update(exact=None, lpips_source="unscored")
        image_rows, shown = [], recon.images.cpu() if recon and recon.images is not None else None
        grid = image_grid(torch.ones_like(shown), shown) if shown is not None else None
        distinct = None
    else:
        if recon is None:
            summary, image_rows, order = metrics.score(None, None, x, y)
            summary["lpips_source"] = "not applicable"
        else:
            summary, image_rows, order = metrics.score(recon.images, recon.labels, x, y, recovered=recon.recovered)
        shown = recon.images[order].cpu() if recon and recon.images is not None else torch.ones_like(x.cpu())
        grid, distinct = image_grid(x.cpu(), shown), len(set(y.tolist()))
    row = {
        **identity(cell, env), "distinct_labels": distinct,
        **{k: summary[k] for k in ("psnr", "ssim", "lpips", "mse", "label_acc", "label_set_acc", "exact")},
        "lpips_source": summary["lpips_source"], "iterations": recon.iterations if recon else 0, "wall_s": wall,
        "status": status, "note": note, "extra": extra, "trace": [float(v) for v in recon.trace] if recon else [],
        "epsilon": cost["epsilon"], "delta": cost["delta"], "adjacency": cost["adjacency"], "bytes": cost["bytes"],
    }
    return row, image_rows, grid


def identity(cell: Cell, env: Environment) -> dict:
    """The columns that say which cell a row is and how it was computed."""
    config = cell.config
    return {
        "cell": cell.id, "attack": config["attack"]["name"], "defense": config["defense"]["name"],
        "dataset": config["dataset"]["name"], "model": config["model"]["name"],
        "protocol": config["protocol"]["name"], "batch_size": config["batch_size"], "seed": config["seed"],
        "selection": config["selection"], "threat_model": config["threat_model"],
        "attack_params": component_params(config, "attack"), "defense_params": component_params(config, "defense"),
        "model_params": component_params(config, "model"), "protocol_params": component_params(config, "protocol"),
        **env.numerics, "hardware": numerics.hardware(env.device),
        "versions": {"giabench": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "config": config,
    }


def failed_result(cell: Cell, env: Environment, exc: BaseException) -> tuple[dict, list[dict], None]:
    """The result of a cell that raised: status ``failed``, the exception's type and first line as the note."""
    reason = f"{type(exc).__name__}: {first_line(exc)}"
    return {**identity(cell, env), "status": "failed", "note": reason.rstrip(": ")}, [], None


def run_cell_safely(cell: Cell, env: Environment, progress=None) -> tuple[dict, list[dict], np.ndarray | None]:
    """``run_cell``, with any failure inside the cell (an attack that raises, diverges to NaN, runs out of memory)
    turned into a result with status ``failed`` and the reason, so the suite goes on."""
    try:
        return run_cell(cell, env, progress)
    except Exception as exc:  # noqa: BLE001 -- one cell's failure is recorded, never the suite's end
        return failed_result(cell, env, exc)


def store_result(store: Store, out: Path, suite_name: str, cell: Cell, result) -> None:
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
        from tqdm import tqdm

        bar = tqdm(total=len(suite.cells), initial=len(suite.cells) - len(todo), desc=f"suite {suite.name}",
                   unit="cell", disable=not show_progress, position=0)

        def finish(cell: Cell, result) -> None:
            store_result(store, out, suite.name, cell, result)
            bar.update(1)

        try:
            if executor == "ray":
                executors.on_ray(todo, run_cell_safely, env, address, finish)
            elif workers <= 1:
                for cell in todo:
                    total = attacks.get(cell.config["attack"]["name"])(**component_params(cell.config, "attack")) \
                        .planned_budget()
                    with tqdm(total=total or None, desc=cell.label, unit="it", leave=False, position=1,
                              disable=not show_progress) as inner:
                        finish(cell, run_cell_safely(cell, env, inner.update))
            else:
                executors.in_pool(todo, run_cell_safely, env, workers, finish)
        finally:
            bar.close()
    return store


def _claim(out: Path, suite: Suite, store: Store, env: Environment) -> None:
    """A run folder holds one suite (by its source: a packaged name or a file's path) under one numerics setting;
    ``suite.json`` records which (rewritten only when it changes, so a finished run in a read-only folder resumes)."""
    stored = store.numerics()
    if stored and stored != [env.numerics]:
        found = "; ".join(_describe(n) for n in stored)
        raise GiabenchError(f"{out} holds cells computed with {found}; this run would use {_describe(env.numerics)}. "
                            "Results under other numerics are other measurements: rerun with the same --threads and "
                            "--device, or use another --out")
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
