"""The utility harness: what a defense costs in accuracy, uplink bytes and time, by short federated training.

K clients hold disjoint IID shards of the training split (seeded). Each round every client draws ``batch`` images
from its shard, runs the protocol under the defense and shares its message; the server decodes each message into an
update estimate (``Client.decode``: the message itself, R^T y for a sketch, the mean over secure-aggregation shards)
and applies their mean:
    FedSGD:  w <- w - server_lr * mean_k u_k          FedAvg:  w <- w - mean_k u_k   (u_k = w - w_k)
DIFF2 keeps its own server state (the running estimator v_r, restarted every T rounds, and x_r = x_{r-1} - lr v_r).
The reference row is the same training without a defense. Test accuracy is the global model's on the held-out split
(HyperFL: the mean over clients of their personalized models, each generated from its private embedding). Epsilon is
composed over every release a client made in the whole run (all rounds, all local steps; every client takes part in
every round, q = 1 at the client level), at the defense's delta and adjacency.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from giabench import data, models, numerics, protocols
from giabench.defenses import diff2 as diff2_module
from giabench.defenses.base import rdp_epsilon
from giabench.errors import ConfigError
from giabench.registry import defenses

UTILITY_COLUMNS = ["defense", "defense_params", "dataset", "model", "protocol", "clients", "rounds", "batch",
                   "accuracy", "bytes_per_round", "wall_per_round_s", "epsilon", "delta", "adjacency", "seed",
                   "threads", "hardware"]


@dataclass
class UtilityConfig:
    dataset: str = "mnist-5k"
    model: dict = field(default_factory=lambda: {"name": "mlp", "width": 64})
    protocol: dict = field(default_factory=lambda: {"name": "fedavg", "epochs": 1, "batch_size": 0, "lr": 0.1})
    clients: int = 4
    rounds: int = 20
    batch: int = 32
    server_lr: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    defenses: list = field(default_factory=lambda: [{"name": "none"}])
    data_root: str = ""


def load_config(path: str | Path) -> UtilityConfig:
    """A utility YAML file (safe YAML, duplicate keys refused); unknown keys and bad values are named."""
    from giabench.suite import parse_yaml

    if Path(path).is_dir():
        raise ConfigError(f"utility config {path}: is a directory, not a YAML file")
    try:
        raw = parse_yaml(Path(path).read_text(encoding="utf-8"), str(path)) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"utility config {path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"utility config {path}: cannot read it ({exc.strerror})") from None
    return config_from_mapping(raw, f"utility config {path}")


def config_from_mapping(raw, where: str) -> UtilityConfig:
    """A ``UtilityConfig`` from a mapping (a utility file, or a suite's ``utility:`` section), every value checked."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    known = UtilityConfig.__dataclass_fields__
    unknown = sorted(set(raw) - set(known) - {"name", "description"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(known)}")
    cfg = UtilityConfig(**{k: v for k, v in raw.items() if k in known})
    if isinstance(cfg.model, str):
        cfg.model = {"name": cfg.model}
    if isinstance(cfg.protocol, str):
        cfg.protocol = {"name": cfg.protocol}
    cfg.defenses = [{"name": d} if isinstance(d, str) else d for d in cfg.defenses]
    for key in ("clients", "rounds", "batch"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
            raise ConfigError(f"{where}: {key} must be a whole number >= 1")
    for key, ok, rule in (("server_lr", lambda v: v > 0, "> 0"), ("test_fraction", lambda v: 0 < v < 1, "in (0, 1)")):
        value = getattr(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{where}: {key} must be a number {rule}, got {value!r}")
    if not all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in cfg.defenses):
        raise ConfigError(f"{where}: every entry of defenses needs a name")
    for d in cfg.defenses:
        params = defenses.resolve(d["name"], {k: v for k, v in d.items() if k != "name"}, f"{where}: defense")
        defenses.get(d["name"])(None, **params)  # constructors check their values before touching the protocol
    return cfg


def fingerprint(cfg: UtilityConfig) -> str:
    """The configuration as canonical JSON: a utility run is reused only for exactly this configuration."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


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


def _load(model: torch.nn.Module, params: dict) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])


def train(cfg: UtilityConfig, defense: dict) -> dict:
    """One federated training run under ``defense``; returns its utility row."""
    imageset = data.load(cfg.dataset, **({"root": cfg.data_root} if cfg.data_root else {}))
    test, shards = split(imageset, cfg.clients, cfg.test_fraction, cfg.seed)
    model_params = {k: v for k, v in cfg.model.items() if k not in ("name", "state", "mode")}
    model = models.build(cfg.model["name"], model_params, imageset, "untrained", cfg.seed)
    model.train(cfg.model.get("mode", "eval") == "train")
    proto_name = cfg.protocol["name"]
    proto_params = protocols.resolve_params(proto_name, {k: v for k, v in cfg.protocol.items() if k != "name"},
                                            "utility protocol")
    name = defense["name"]
    params = defenses.resolve(name, {k: v for k, v in defense.items() if k != "name"}, f"utility defense {name}")
    factory = defenses.get(name)
    gen = torch.Generator().manual_seed(cfg.seed)
    if name == "hidenseek":
        return _hidenseek(cfg, factory, params, model, proto_name, proto_params, imageset, test, shards, gen)
    if name == "hyperfl":
        return _hyperfl(cfg, factory, params, model, proto_name, proto_params, imageset, test, shards, gen)
    step = cfg.server_lr if proto_name == "fedsgd" else 1.0
    estimator, previous, bytes_up, cost = None, None, 0, {}
    histories = [[] for _ in shards]  # every DP release each client made, over all rounds
    start = time.perf_counter()
    for r in range(cfg.rounds):
        protocol = protocols.build(proto_name, proto_params, model)
        current = {k: v.clone() for k, v in protocol.params.items()}
        round_params = {**params, "seed": params["seed"] * 100_003 + r} if "seed" in params else params  # fresh R_t
        messages = []
        for shard, history in zip(shards, histories, strict=True):
            x, y = _draw(imageset, shard, cfg.batch, gen)
            if name == "diff2":
                messages.append(_diff2_message(protocol, current, previous, r, x, y, round_params, gen))
                continue
            client = factory(protocol, **round_params)
            message = client.share(x, y, gen)
            messages.append(client.decode(message))
            history += client.releases
            cost = client.cost()
            bytes_up += cost["bytes"]
        mean = {key: sum(m[key] for m in messages) / len(messages) for key in current}
        if name == "diff2":  # DIFF2-GD: the server steps along its estimator with server_lr whatever the protocol
            step = cfg.server_lr
            client = factory(protocols.build("fedsgd", {}, model), **{**params, "total_rounds": cfg.rounds})
            cost = client.cost()
            bytes_up += cfg.clients * cost["bytes"]
            restart = r % client.period == 0
            estimator = mean if restart else {key: estimator[key] + mean[key] for key in mean}
            mean = estimator
        previous = current
        _load(model, {key: current[key] - step * mean[key] for key in current})
    if any(histories):  # epsilon composed over every round and local step, the worst client's
        cost = {**cost, "epsilon": max(rdp_epsilon(h, cost["delta"], cost["adjacency"]) for h in histories)}
    return _row(cfg, name, params, accuracy(model, imageset, test), bytes_up, time.perf_counter() - start, cost)


def _row(cfg, name, params, acc, bytes_up, wall, cost) -> dict:
    return {"defense": name, "defense_params": params, "dataset": cfg.dataset, "model": cfg.model["name"],
            "protocol": cfg.protocol["name"], "clients": cfg.clients, "rounds": cfg.rounds, "batch": cfg.batch,
            "accuracy": acc, "bytes_per_round": bytes_up / cfg.rounds,
            "wall_per_round_s": wall / cfg.rounds, "epsilon": cost.get("epsilon", math.inf),
            "delta": cost.get("delta", 0.0), "adjacency": cost.get("adjacency", ""), "seed": cfg.seed}


def _draw(imageset, shard, batch, gen):
    pick = shard[torch.randperm(len(shard), generator=gen)[:batch]]
    return imageset.images[pick], imageset.labels[pick]


def _hidenseek(cfg, factory, params, model, proto_name, proto_params, imageset, test, shards, gen) -> dict:
    """HideNseek rounds: the weights stay at theta0 and the server keeps the scores z; clients start from z and
    upload score updates (the server averages them) or signs (the server takes a majority vote, ties to +1)."""
    start, bytes_up = time.perf_counter(), 0
    protocol = protocols.build(proto_name, proto_params, model)
    client = factory(protocol, **params)  # the SynFlow mask is computed once; clients differ only in their data
    z, scale = client.scores, params["score_init"]
    for _ in range(cfg.rounds):
        client.scores = z
        messages = [client.share(*_draw(imageset, shard, cfg.batch, gen), gen) for shard in shards]
        bytes_up += len(shards) * client.cost()["bytes"]
        mean = {k: sum(m[k] for m in messages) / len(messages) for k in z}
        if params["upload"] == "scores":
            step = cfg.server_lr if proto_name == "fedsgd" else 1.0
            z = {k: z[k] - step * mean[k] for k in z}
        else:
            z = {k: scale * torch.where(mean[k] >= 0, 1.0, -1.0) for k in z}
    _load(model, {k: v.detach() for k, v in client.effective(z).items()})
    return _row(cfg, "hidenseek", params, accuracy(model, imageset, test), bytes_up, time.perf_counter() - start,
                client.cost())


def _hyperfl(cfg, factory, params, model, proto_name, proto_params, imageset, test, shards, gen) -> dict:
    """HyperFL rounds: the server averages the hypernetwork updates; every client keeps its own embedding and head
    (drawn from ``private_seed + k``). Accuracy is the mean of the clients' personalized models on the test split."""
    start, bytes_up = time.perf_counter(), 0
    protocol = protocols.build(proto_name, proto_params, model)
    clients = [factory(protocol, **{**params, "private_seed": params["private_seed"] + k}) for k in range(len(shards))]
    phi = clients[0].phi
    step = cfg.server_lr if proto_name == "fedsgd" else 1.0
    for _ in range(cfg.rounds):
        messages = []
        for client, shard in zip(clients, shards, strict=True):
            client.phi = phi
            x, y = _draw(imageset, shard, cfg.batch, gen)
            message, client.embedding, client.head_params = (
                _detached(part) for part in client.local_round(x, y, client.embedding, client.head_params))
            messages.append(message)
            bytes_up += client.cost()["bytes"]
        phi = {k: phi[k] - step * sum(m[k] for m in messages) / len(messages) for k in phi}
    scores = []
    for client in clients:
        _load(model, client.weights(phi, client.embedding, client.head_params))
        scores.append(accuracy(model, imageset, test))
    return _row(cfg, "hyperfl", params, sum(scores) / len(scores), bytes_up, time.perf_counter() - start,
                clients[0].cost())


def _detached(part):
    return {k: v.detach() for k, v in part.items()} if isinstance(part, dict) else part.detach()


def _diff2_message(protocol, current, previous, r, x, y, params, gen):
    """One node's DIFF2 message at round r: a restart every ``period`` rounds, a gradient difference otherwise."""
    if r % params["period"] == 0 or previous is None:
        return diff2_module.restart_message(protocol, current, x, y, params["clip1"], params["noise1"], gen)
    return diff2_module.difference_message(protocol, current, previous, x, y, params["clip2"], params["noise2"], gen)


def run(cfg: UtilityConfig, out: str | Path, show_progress: bool = True, threads: int = 1) -> pd.DataFrame:
    """Train under every defense of ``cfg`` (the undefended reference first), with ``threads`` CPU threads pinned
    (``giabench.numerics``), and write ``utility.csv``."""
    from tqdm import tqdm

    settings = [{"name": "none"}] + [d for d in cfg.defenses if d != {"name": "none"}]
    numerics.settings("cpu", threads)
    with numerics.pinned("cpu", threads):
        rows = [train(cfg, d) for d in tqdm(settings, desc="utility", unit="defense", disable=not show_progress)]
    frame = pd.DataFrame(rows).assign(threads=threads, hardware=numerics.hardware("cpu"))
    frame["defense_params"] = frame["defense_params"].map(lambda p: json.dumps(p, sort_keys=True))  # as cells store
    Path(out).mkdir(parents=True, exist_ok=True)
    frame[UTILITY_COLUMNS].to_csv(Path(out) / "utility.csv", index=False, float_format="%.6g")
    return frame[UTILITY_COLUMNS]
