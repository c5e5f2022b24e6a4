"""Run cells: play one federated round under the defense, hand the attacker the server's view, score the result.

Every random draw comes from a ``torch.Generator`` seeded from the cell's seed (batch choice, model init, the defense's
fresh noise, the attack's initialization), and every cell runs under pinned numerics (``giabench.numerics``: thread
count, device, dtype), the same in-process and in worker processes, so a cell gives the same numbers whenever it runs
on the same hardware with the same settings. A run folder holds cells of one numerics setting only.
"""

from __future__ import annotations

import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from giabench import __version__, data, metrics, models, numerics, protocols, threats
from giabench.attacks.base import ServerView
from giabench.errors import ConfigError, GiabenchError, NotApplicable
from giabench.registry import attacks, datasets, defenses
from giabench.store import Store
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
    params = _params(config, "dataset")
    name = config["dataset"]["name"]
    if not name.startswith("folder:") and "root" in datasets.defaults(name):
        params["root"] = params.get("root") or env.data_root
        params["download"] = params.get("download") or env.download
    return data.load(name, **params)


def _params(config: dict, component: str, *drop: str) -> dict:
    """A component's parameters without its name (and without ``drop``)."""
    return {k: v for k, v in config[component].items() if k not in ("name", *drop)}


def _seeded(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + stream)


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
    model_cfg = _params(config, "model", "state", "mode")
    model = models.build(config["model"]["name"], model_cfg, imageset, config["model"]["state"], seed).to(device)
    model.train(config["model"]["mode"] == "train")
    threat = config["threat_model"]
    others = surrogate(imageset, index) if threats.grants(threat, "surrogate-data") else None
    attack_cfg = _params(config, "attack")
    attacker = attacks.get(config["attack"]["name"])(**attack_cfg)
    status, note, recon, extra = "ok", "", None, {}
    try:
        model = attacker.prepare(model, imageset.shape, others, _seeded(seed, 3))
    except NotApplicable as exc:
        status, note, extra = "not-applicable", str(exc), exc.details
    protocol_cfg = _params(config, "protocol")
    protocol = protocols.build(config["protocol"]["name"], protocol_cfg, model)
    defense_cfg = _params(config, "defense")
    client = defenses.get(config["defense"]["name"])(protocol, **defense_cfg)
    message = client.share(x, y, _seeded(seed, 1))

    view = ServerView(model, protocol, message, dict(client.public), imageset.shape, imageset.num_classes,
                      x.shape[0], y.detach().cpu() if threats.grants(threat, "labels") else None, others)
    start = time.perf_counter()
    if status == "ok":
        try:
            recon = attacker.reconstruct(view, client.simulate, _seeded(seed, 2), progress)
            extra = recon.extra
        except NotApplicable as exc:
            status, note, extra = "not-applicable", str(exc), exc.details
    wall = time.perf_counter() - start

    if recon is None:
        summary, image_rows, order = metrics.score(None, None, x, y)
        summary["lpips_source"] = "not applicable"
    else:
        summary, image_rows, order = metrics.score(recon.images, recon.labels, x, y, recovered=recon.recovered)
    cost = client.cost()
    row = {
        "cell": cell.id, "attack": config["attack"]["name"], "defense": config["defense"]["name"],
        "dataset": config["dataset"]["name"], "model": config["model"]["name"],
        "protocol": config["protocol"]["name"], "batch_size": config["batch_size"], "seed": seed,
        "selection": config["selection"], "threat_model": threat, "distinct_labels": len(set(y.tolist())),
        **{k: summary[k] for k in ("psnr", "ssim", "lpips", "mse", "label_acc", "label_set_acc", "exact")},
        "lpips_source": summary["lpips_source"], "iterations": recon.iterations if recon else 0, "wall_s": wall,
        "status": status, "note": note, "extra": extra,
        "epsilon": cost["epsilon"], "delta": cost["delta"], "adjacency": cost["adjacency"], "bytes": cost["bytes"],
        "attack_params": attack_cfg, "defense_params": defense_cfg,
        "model_params": _params(config, "model"), "protocol_params": protocol_cfg,
        **env.numerics, "hardware": numerics.hardware(env.device),
        "versions": {"giabench": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "config": config,
    }
    shown = recon.images[order].cpu() if recon and recon.images is not None else torch.ones_like(x.cpu())
    grid = image_grid(x.cpu(), shown)
    return row, image_rows, grid


def surrogate(imageset: data.ImageSet, private: torch.Tensor) -> torch.Tensor:
    """The dataset's images other than the client's batch: the attacker's surrogate data (threat model D and up)."""
    keep = torch.ones(len(imageset), dtype=torch.bool)
    keep[private] = False
    return imageset.images[keep]


def tile(images: torch.Tensor, columns: int, pad: int = 2, margin: int = 2) -> np.ndarray:
    """N x C x H x W images in [0, 1] laid out row by row on white, ``pad`` pixels apart and ``margin`` from the
    border, as an H x W x 3 uint8 array."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.ones(3, rows * h + (rows - 1) * pad + 2 * margin, columns * w + (columns - 1) * pad + 2 * margin)
    for i, img in enumerate(images.clamp(0, 1)):
        top, left = margin + (i // columns) * (h + pad), margin + (i % columns) * (w + pad)
        canvas[:, top:top + h, left:left + w] = img.expand(3, h, w)
    return (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def image_grid(truth: torch.Tensor, recon: torch.Tensor, pad: int = 2) -> np.ndarray:
    """Originals on the top row, matched reconstructions below, as an H x W x 3 uint8 array."""
    return tile(torch.cat([truth, recon]), truth.shape[0], pad, pad)


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={settings.get(k)}" for k in ("device", "threads", "dtype"))


def run_suite(suite: Suite, out: str | Path, env: Environment, workers: int = 1, show_progress: bool = True) -> Store:
    """Run every cell of ``suite`` that ``out`` does not hold yet; finished cells are stored as they complete."""
    store = Store(out)
    stored = store.numerics()
    if stored and stored != [env.numerics]:
        found = "; ".join(_describe(n) for n in stored)
        raise GiabenchError(f"{out} holds cells computed with {found}; this run would use {_describe(env.numerics)}. "
                            "Results under other numerics are other measurements: rerun with the same --threads and "
                            "--device, or use another --out")
    (Path(out) / "suite.json").write_text(json.dumps(
        {"name": suite.name, "description": suite.description, "source": suite.source,
         "cells": [c.id for c in suite.cells]}, indent=1))
    done = store.finished()
    todo = [c for c in suite.cells if c.id not in done]
    from tqdm import tqdm

    bar = tqdm(total=len(suite.cells), initial=len(suite.cells) - len(todo), desc=f"suite {suite.name}",
               unit="cell", disable=not show_progress, position=0)

    def finish(cell: Cell, result) -> None:
        row, images, grid = result
        image_path = Path(out) / "images" / f"{cell.id}.png"
        Image.fromarray(grid).save(image_path)
        row.update(suite=suite.name, image=f"images/{cell.id}.png",
                   finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
        store.write(row, images)
        bar.update(1)

    if workers <= 1:
        for cell in todo:
            total = attacks.get(cell.config["attack"]["name"])(**_params(cell.config, "attack")).planned_budget()
            with tqdm(total=total or None, desc=cell.label, unit="it", leave=False, position=1,
                      disable=not show_progress) as inner:
                finish(cell, run_cell(cell, env, inner.update))
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_cell, cell, env): cell for cell in todo}
            for future in as_completed(futures):
                finish(futures[future], future.result())
    bar.close()
    return store
