"""The utility harness: what a defense costs in accuracy, uplink bytes and time, by short federated training.

K clients hold disjoint IID shards of the training split (seeded). Each round every client draws ``batch`` images
from its shard; the defense's federation (``Client.federation``, ``giabench.federation``) runs the clients and the
server for that round. The reference row is the same training without a defense. Test accuracy is that of the
federation's final models on the held-out split (their mean where each client keeps a personalized model). Epsilon is
composed over every release a client made in the whole run (all rounds, all local steps; every client takes part in
every round, q = 1 at the client level), at the defense's delta and adjacency.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

from giabench import components, data, numerics
from giabench.components import Component
from giabench.errors import ConfigError
from giabench.federation import load_parameters
from giabench.utility_config import UTILITY_COLUMNS, UtilityConfig, fingerprint


def split(imageset: data.ImageSet, clients: int, test_fraction: float, seed: int):
    order = torch.randperm(len(imageset), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(imageset)))
    test, train = order[:n_test], order[n_test:]
    if len(train) < clients:
        raise ConfigError(f"utility: {len(train)} training images cannot feed {clients} clients")
    return test, list(torch.tensor_split(train, clients))


def accuracy(model: torch.nn.Module, imageset: data.ImageSet, index: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(imageset.images[chunk]).argmax(1) == imageset.labels[chunk]).sum())
                   for chunk in index.split(512))
    return hits / len(index)


def _imageset(cfg: UtilityConfig) -> data.ImageSet:
    return data.load(cfg.dataset, **({"root": cfg.data_root} if cfg.data_root else {}))


def train(cfg: UtilityConfig, defense: Component) -> dict:
    """One federated training run under ``defense``; returns its utility row."""
    imageset = _imageset(cfg)
    test, shards = split(imageset, cfg.clients, cfg.test_fraction, cfg.seed)
    model = components.build_model(cfg.model, imageset, cfg.seed)  # untrained: the utility config refuses a state
    gen = torch.Generator().manual_seed(cfg.seed)

    def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        pick = shards[k][torch.randperm(len(shards[k]), generator=gen)[:cfg.batch]]
        return imageset.images[pick], imageset.labels[pick]

    start = time.perf_counter()
    federation = defense.factory.federation(defense, model, cfg.protocol, cfg.clients, cfg.rounds, cfg.server_lr)
    for r in range(cfg.rounds):
        federation.round(r, draw, gen)
    scores = []
    for weights in federation.final_models():
        load_parameters(model, weights)
        scores.append(accuracy(model, imageset, test))
    cost = federation.cost()
    return {"defense": defense.name, "defense_params": defense.params, "dataset": cfg.dataset,
            "model": cfg.model.name, "protocol": cfg.protocol.name, "clients": cfg.clients, "rounds": cfg.rounds,
            "batch": cfg.batch,
            "accuracy": sum(scores) / len(scores), "bytes_per_round": federation.uploaded / cfg.rounds,
            "wall_per_round_s": (time.perf_counter() - start) / cfg.rounds, "epsilon": cost["epsilon"],
            "delta": cost["delta"], "adjacency": cost["adjacency"], "seed": cfg.seed}


def check_data(cfg: UtilityConfig) -> None:
    """The dataset loads and its training split feeds every client (before the first run starts)."""
    imageset = _imageset(cfg)
    split(imageset, cfg.clients, cfg.test_fraction, cfg.seed)


def run(cfg: UtilityConfig, out: str | Path, show_progress: bool = True, threads: int = 1) -> pd.DataFrame:
    """Train under every defense of ``cfg`` (the undefended reference first), with ``threads`` CPU threads pinned
    (``giabench.numerics``), and write ``utility.csv``."""
    from tqdm import tqdm

    reference = components.defense("none", {}, cfg.protocol, cfg.batch)
    settings = [reference] + [d for d in cfg.defenses if d != reference]
    numerics.settings("cpu", threads)
    check_data(cfg)
    with numerics.pinned("cpu", threads):
        rows = [train(cfg, d) for d in tqdm(settings, desc="utility", unit="defense", disable=not show_progress)]
    frame = pd.DataFrame(rows).assign(threads=threads, hardware=numerics.hardware("cpu"))
    frame["defense_params"] = frame["defense_params"].map(lambda p: json.dumps(p, sort_keys=True))  # as cells store
    Path(out).mkdir(parents=True, exist_ok=True)
    frame[UTILITY_COLUMNS].to_csv(Path(out) / "utility.csv", index=False, float_format="%.6g")
    return frame[UTILITY_COLUMNS]


def run_once(cfg: UtilityConfig, folder: Path, threads: int, show_progress: bool) -> None:
    """A suite's utility section, trained once per configuration (``folder/config.json`` records it)."""
    record = folder / "config.json"
    if (folder / "utility.csv").is_file() and record.is_file() and \
            record.read_text(encoding="utf-8") == fingerprint(cfg):
        return
    run(cfg, folder, show_progress=show_progress, threads=threads)
    record.write_text(fingerprint(cfg), encoding="utf-8")
