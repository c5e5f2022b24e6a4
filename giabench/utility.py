"""The utility harness: what a defense costs in accuracy, uplink bytes and time, by short federated training.

K clients hold disjoint shards of the training split (seeded): IID, or label-skewed with a local test set each
(``partition``). Each round every client draws ``batch`` images from its shard; the defense's federation
(``Client.federation``, ``giabench.federation``) runs the clients and the server for that round. The reference row is
the same training without a defense. Test accuracy is that of the federation's final models on the held-out split
(their mean where each client keeps a personalized model); under label skew, the mean over clients of each client's
model (or the global one) on its local test set. Epsilon is
composed over every release a client made in the whole run (all rounds, all local steps; every client takes part in
every round, q = 1 at the client level), at the defense's delta and adjacency.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import pandas as pd
import torch

from giabench import components, data, numerics
from giabench.components import Component
from giabench.errors import ConfigError
from giabench.federation import load_parameters
from giabench.utility_config import TUNED_COLUMNS, UTILITY_COLUMNS, UtilityConfig, fingerprint


def split(imageset: data.ImageSet, clients: int, test_fraction: float, seed: int,
          partition: dict | None = None, validation: float = 0.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(test sets, training shards): a seeded held-out ``test_fraction`` of the images, the rest dealt to the
    clients as the ``partition`` says (``giabench.utility_config.PARTITIONS``). ``iid``: one shared test set and
    equal random shards, less the ``validation`` share of the training images (``held_out``); ``label-skew``: per
    client a training set and a local test set with its label mix."""
    test, held, train = _order(imageset, test_fraction, seed, validation)
    if partition is not None and partition["name"] == "label-skew":
        return _label_skew(imageset, test, train, clients, partition, seed)
    if len(train) < clients:
        raise ConfigError(f"utility: {len(train)} training images cannot feed {clients} clients")
    return [test], list(torch.tensor_split(train, clients))


def held_out(imageset: data.ImageSet, test_fraction: float, seed: int, validation: float) -> torch.Tensor:
    """The validation images ``split`` keeps from the clients: the training hyperparameters are chosen on them, so
    the test split scores the chosen run only."""
    return _order(imageset, test_fraction, seed, validation)[1]


def _order(imageset, test_fraction: float, seed: int, validation: float):
    order = torch.randperm(len(imageset), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(imageset)))
    n_held = int(round(validation * (len(imageset) - n_test)))
    return order[:n_test], order[n_test:n_test + n_held], order[n_test + n_held:]


def label_counts(partition: dict, num_classes: int, k: int, size: int) -> list[int]:
    """Client ``k``'s images per class among ``size``: ``share`` of them from ``classes`` consecutive classes
    starting at class (classes - 1) k mod C (HyperFL's groups 012, 234, 456, 678, 890 for 3 of 10), the rest
    spread over all C classes alike (remainders to the lowest classes)."""
    main = round(partition["share"] * size)
    chosen = [((max(partition["classes"] - 1, 1)) * k + j) % num_classes for j in range(partition["classes"])]
    counts = [(size - main) // num_classes + (c < (size - main) % num_classes) for c in range(num_classes)]
    for i, c in enumerate(chosen):
        counts[c] += main // len(chosen) + (i < main % len(chosen))
    return counts


def _label_skew(imageset, test: torch.Tensor, train: torch.Tensor, clients: int, partition: dict, seed: int):
    """Training sets drawn without replacement across clients; each local test set drawn from the held-out images
    (test sets of different clients may share images, as in HyperFL's code)."""
    num_classes = len(imageset.classes)
    pools = [train[imageset.labels[train] == c] for c in range(num_classes)]
    held = [test[imageset.labels[test] == c] for c in range(num_classes)]
    taken = [0] * num_classes
    gen = torch.Generator().manual_seed(seed + 1)
    tests, shards = [], []
    for k in range(clients):
        picks = []
        for c, n in enumerate(label_counts(partition, num_classes, k, partition["train"])):
            if taken[c] + n > len(pools[c]):
                raise ConfigError(f"utility: partition label-skew needs more than the {len(pools[c])} training "
                                  f"images of class {c} for {clients} clients of {partition['train']}")
            picks.append(pools[c][taken[c]:taken[c] + n])
            taken[c] += n
        shards.append(torch.cat(picks))
        local = []
        for c, n in enumerate(label_counts(partition, num_classes, k, partition["test"])):
            if n > len(held[c]):
                raise ConfigError(f"utility: a local test set of {partition['test']} needs {n} held-out images of "
                                  f"class {c}, {len(held[c])} are held out (raise test_fraction)")
            local.append(held[c][torch.randperm(len(held[c]), generator=gen)[:n]])
        tests.append(torch.cat(local))
    return tests, shards


def accuracy(model: torch.nn.Module, imageset: data.ImageSet, index: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(imageset.images[chunk]).argmax(1) == imageset.labels[chunk]).sum())
                   for chunk in index.split(512))
    return hits / len(index)


def _imageset(cfg: UtilityConfig) -> data.ImageSet:
    return data.load(cfg.dataset.name, **{**cfg.dataset.params, **({"root": cfg.data_root} if cfg.data_root else {})})


def train(cfg: UtilityConfig, defense: Component, validation: float = 0.0) -> dict:
    """One federated training run under ``defense``; returns its utility row (with ``validation_accuracy`` where a
    ``validation`` share of the training split was held out)."""
    imageset = _imageset(cfg)
    tests, shards = split(imageset, cfg.clients, cfg.test_fraction, cfg.seed, cfg.partition, validation)
    model = components.build_model(cfg.model, imageset, cfg.seed)  # untrained: the utility config refuses a state
    gen = torch.Generator().manual_seed(cfg.seed)

    def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        pick = shards[k][torch.randperm(len(shards[k]), generator=gen)[:cfg.batch]]
        return imageset.images[pick], imageset.labels[pick]

    start = time.perf_counter()
    federation = defense.factory.federation(defense, model, cfg.protocol, cfg.clients, cfg.rounds, cfg.server_lr)
    for r in range(cfg.rounds):
        federation.round(r, draw, gen)
    finals = federation.final_models()
    pairs = [(w, tests[0]) for w in finals] if len(tests) == 1 else \
        [(finals[k] if len(finals) > 1 else finals[0], tests[k]) for k in range(cfg.clients)]
    scores, checked = [], []
    held = held_out(imageset, cfg.test_fraction, cfg.seed, validation) if validation else None
    for weights, test in pairs:
        load_parameters(model, weights)
        scores.append(accuracy(model, imageset, test))
        if held is not None:
            checked.append(accuracy(model, imageset, held))
    cost = federation.cost()
    return {"defense": defense.name, "defense_params": defense.params, "dataset": cfg.dataset.name,
            "model": cfg.model.name, "protocol": cfg.protocol.name, "clients": cfg.clients, "rounds": cfg.rounds,
            "batch": cfg.batch,
            "accuracy": sum(scores) / len(scores), "bytes_per_round": federation.uploaded / cfg.rounds,
            "wall_per_round_s": (time.perf_counter() - start) / cfg.rounds, "epsilon": cost["epsilon"],
            "delta": cost["delta"], "adjacency": cost["adjacency"], "seed": cfg.seed,
            **({"validation_accuracy": sum(checked) / len(checked)} if checked else {})}


def variants(cfg: UtilityConfig, defense: Component) -> list[tuple[dict, UtilityConfig, Component]]:
    """Every training configuration ``cfg.tune`` allows ``defense``: (the chosen values, the config, the defense).
    ``server_lr`` applies to every defense, ``lr`` to a protocol with a local step size, any other key to a defense
    that declares that parameter; one variant, the configuration as given, when nothing applies."""
    axes = [(key, values) for key, values in cfg.tune.items()
            if key == "server_lr" or (key == "lr" and "lr" in cfg.protocol.params) or key in defense.params]
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        chosen = dict(zip([key for key, _ in axes], combo, strict=True))
        protocol = components.from_config("protocol", {**cfg.protocol.config, "lr": chosen["lr"]}) \
            if "lr" in chosen else cfg.protocol
        own = {k: v for k, v in chosen.items() if k not in ("server_lr", "lr")}
        tuned = components.from_config("defense", {**defense.config, **own}, protocol=protocol, batch_size=cfg.batch)
        out.append((chosen, dataclasses.replace(cfg, protocol=protocol, server_lr=chosen.get("server_lr",
                                                                                              cfg.server_lr)), tuned))
    return out


def tuned_train(cfg: UtilityConfig, defense: Component) -> dict:
    """``train`` under ``defense`` at the training configuration of highest validation accuracy among
    ``variants`` (ties: the first); the row keeps the declared defense setting (so that it joins the attacked
    cells) and records the chosen values (``tuned``), their validation accuracy and how many were tried."""
    if not cfg.tune:
        return train(cfg, defense)
    tried = [(chosen, train(config, tuned, cfg.validation)) for chosen, config, tuned in variants(cfg, defense)]
    chosen, row = max(tried, key=lambda pair: pair[1]["validation_accuracy"])
    return {**row, "defense_params": defense.params, "tuned": json.dumps(chosen, sort_keys=True),
            "variants": len(tried)}


def check_data(cfg: UtilityConfig) -> None:
    """The dataset loads and its training split feeds every client, and every tuned training configuration is
    valid for its defense (before the first run starts)."""
    imageset = _imageset(cfg)
    split(imageset, cfg.clients, cfg.test_fraction, cfg.seed, cfg.partition, cfg.validation if cfg.tune else 0.0)
    for defense in cfg.defenses:
        variants(cfg, defense)


def run(cfg: UtilityConfig, out: str | Path, show_progress: bool = True, threads: int = 1) -> pd.DataFrame:
    """Train under every defense of ``cfg`` (the undefended reference first), with ``threads`` CPU threads pinned
    (``giabench.numerics``), and write ``utility.csv``."""
    from tqdm import tqdm

    reference = components.defense("none", {}, cfg.protocol, cfg.batch)
    settings = [reference] + [d for d in cfg.defenses if d != reference]
    numerics.settings("cpu", threads)
    check_data(cfg)
    with numerics.pinned("cpu", threads):
        rows = [tuned_train(cfg, d) for d in tqdm(settings, desc="utility", unit="defense",
                                                  disable=not show_progress)]
    frame = pd.DataFrame(rows).assign(threads=threads, hardware=numerics.hardware("cpu"))
    frame["defense_params"] = frame["defense_params"].map(lambda p: json.dumps(p, sort_keys=True))  # as cells store
    columns = UTILITY_COLUMNS + (TUNED_COLUMNS if cfg.tune else [])
    Path(out).mkdir(parents=True, exist_ok=True)
    frame[columns].to_csv(Path(out) / "utility.csv", index=False, float_format="%.6g")
    return frame[columns]


def run_once(cfg: UtilityConfig, folder: Path, threads: int, show_progress: bool) -> None:
    """A suite's utility section, trained once per configuration (``folder/config.json`` records it)."""
    record = folder / "config.json"
    if (folder / "utility.csv").is_file() and record.is_file() and \
            record.read_text(encoding="utf-8") == fingerprint(cfg):
        return
    run(cfg, folder, show_progress=show_progress, threads=threads)
    record.write_text(fingerprint(cfg), encoding="utf-8")
