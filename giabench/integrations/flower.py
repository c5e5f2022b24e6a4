"""Leakage measured inside a Flower app (``flwr`` 1.42, its Message API): ``LeakageStrategy`` wraps any Flower
strategy (FedAvg, FedProx, ...), leaves the aggregation to it, and every ``every`` rounds hands each client's update
to giabench's attacks as the FedAvg message it is.

The server side of round r knows the global weights w_0 it sent and the fit configuration of each client (local
``epochs``, local ``batch-size``, 0 meaning the whole batch, and ``lr``); a reply carries the client's weights w_K
and its ``num-examples``, the batch B. The update u = w_0 - w_K over the model's parameters is giabench's FedAvg
message (``giabench.protocols.FedAvg``), attacked through the same ``ServerView``, attack and scoring as a suite
cell. The defense the adaptive attacker simulates is declared: by the server, ``giabench-defense`` in the fit
configuration (a defense name or a JSON object ``{"name": ..., params}``; default the strategy's ``defense``), or by
the client, a ConfigRecord ``giabench`` in its reply whose fields (``giabench-defense``, ``epochs``, ``batch-size``,
``lr``) replace the fit configuration's: a client that trains its own way says so (``opacus_declaration`` writes an
Opacus client's). A DP client's epsilon is composed over every round the strategy saw it reply in (every local step
of each, the defense's own accountant), and the epsilon the client reports (``dp-epsilon``, ``dp-delta`` in its
declaration: Opacus' accountant) is stored beside it. Each attacked update is one cell in the run folder ``out`` (its id
from round, client, attack and defense, so a restarted app skips what is stored); ``giabench leaderboard OUT``
renders them, with the leakage per round. Scored when ``truth(node_id, round, metrics)`` returns
the client's private batch (a simulation knows each client's data; the reply's metrics, e.g. a partition id the
client reports, say whose it is; or a client that opts in for an audit); otherwise the reconstructions are
stored unscored, and the report says so. Nothing raised while attacking reaches Flower: a reply that does not match
the model, a configuration without the fields the simulation needs, an attack that does not apply become a stored
cell with status ``failed`` or ``not-applicable`` and a line in Flower's log.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from PIL import Image

from giabench import data, protocols, runner, threats
from giabench.contracts import ServerView
from giabench.errors import ConfigError, first_line
from giabench.registry import attacks as attack_registry
from giabench.registry import defenses
from giabench.store import Store
from giabench.suite import Cell, cell_id

DECLARATION = "giabench"  # the ConfigRecord of a reply in which a client declares how it trained
CONFIG_FIELDS = {"epochs": ("epochs", "local-epochs"), "batch_size": ("batch-size", "batch_size"), "lr": ("lr",)}
Truth = Callable[[int, int, dict], "tuple[torch.Tensor, torch.Tensor] | None"]


def fedavg_params(config: dict) -> dict:
    """The FedAvg simulation's parameters from a client's fit configuration, naming the first missing field."""
    params = {}
    for name, keys in CONFIG_FIELDS.items():
        found = [config[k] for k in keys if k in config]
        if not found:
            raise ConfigError(f"the fit configuration has no {keys[0]!r}: the FedAvg simulation needs epochs, "
                              "batch-size and lr", field=keys[0])
        params[name] = found[0]
    return {"epochs": int(params["epochs"]), "batch_size": int(params["batch_size"]), "lr": float(params["lr"])}


def update_of(model: torch.nn.Module, sent: dict, received: dict) -> dict:
    """u = w_0 - w_K over ``model``'s parameters, naming the first parameter the reply lacks or shapes differently."""
    update = {}
    for name, param in model.named_parameters():
        if name not in received:
            raise ConfigError(f"the client's update has no parameter {name!r} of the global model (it holds "
                              f"{', '.join(list(received)[:4])}...)")
        if tuple(received[name].shape) != tuple(param.shape):
            raise ConfigError(f"the client's {name} has shape {tuple(received[name].shape)}, the global model's "
                              f"{tuple(param.shape)}")
        update[name] = (sent[name].float() - received[name].float()).to(param.device)
    return update


def declaration(reply: Message) -> dict:
    """The client's own declaration: the fields of the reply's ConfigRecord ``giabench`` (empty without one)."""
    return dict(reply.content.config_records.get(DECLARATION, {})) if reply.has_content() else {}


def opacus_declaration(optimizer, data_loader, epochs: int, delta: float) -> dict:
    """What a client that trained ``epochs`` epochs with Opacus (``PrivacyEngine.make_private``: its DPOptimizer and
    Poisson DPDataLoader) declares in its reply's ConfigRecord ``giabench``. Opacus' step on a Poisson sample of rate
    q = ``data_loader.sample_rate`` of the n records, g = (sum_i clip_C(g_i) + N(0, z^2 C^2 I)) / (q n), is
    giabench's dp-sgd on a whole-batch FedAvg step with ``sample_rate`` q, and an epoch is len(data_loader) = 1/q such
    steps; clip C, noise multiplier z and lr are the optimizer's. Plain SGD with mean reduction and an integral
    expected batch q n only (otherwise Opacus' update is not this one)."""
    group = optimizer.param_groups[0]
    n, q = len(data_loader.dataset), float(data_loader.sample_rate)
    if optimizer.loss_reduction != "mean" or not math.isclose(optimizer.expected_batch_size, q * n, rel_tol=1e-9):
        raise ConfigError(f"Opacus' step divides by {optimizer.expected_batch_size} ({optimizer.loss_reduction} "
                          f"reduction), giabench's dp-sgd by q n = {q * n:g}: use mean reduction and a batch size "
                          "that divides the client's records")
    if group.get("momentum", 0) or group.get("weight_decay", 0) or len(optimizer.param_groups) != 1:
        raise ConfigError("the FedAvg simulation runs plain SGD: one parameter group, no momentum, no weight decay")
    defense = {"name": "dp-sgd", "clip": float(optimizer.max_grad_norm),
               "noise_multiplier": float(optimizer.noise_multiplier), "sample_rate": q, "delta": float(delta)}
    return {"giabench-defense": json.dumps(defense), "epochs": int(epochs) * len(data_loader), "batch-size": 0,
            "lr": float(group["lr"])}


def declared_defense(config: dict, default: dict) -> dict:
    """The client's declared defense from ``giabench-defense`` (a name or a JSON object with ``name``)."""
    raw = config.get("giabench-defense")
    if raw is None:
        return dict(default)
    value = json.loads(raw) if str(raw).lstrip().startswith("{") else {"name": str(raw)}
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"giabench-defense must be a defense name or a JSON object with 'name', got {raw!r}")
    return value


class LeakageStrategy(Strategy):
    """``inner`` aggregates; this attacks. ``model``: the app's network as a giabench classifier (its parameter names
    are the update's); ``dataset``: the giabench dataset of the clients' images (shape, classes, normalization);
    ``attacks``: attack names or configs (``{"name": "ig", "iterations": 200}``)."""

    def __init__(self, inner: Strategy, *, model: torch.nn.Module, dataset: str, attacks: Iterable,
                 out: str | Path, every: int = 1, defense: dict | None = None, truth: Truth | None = None,
                 seed: int = 0):
        if every < 1:
            raise ConfigError(f"every must be at least 1, got {every}", field="every")
        self.inner, self.model, self.every, self.truth, self.seed = inner, model, every, truth, seed
        self.imageset = data.load(dataset)
        self.attack_configs = [{"name": a} if isinstance(a, str) else dict(a) for a in attacks]
        self.threat_models = [  # bad names and parameters fail here, before any round
            threats.minimal(attack_registry.get(c["name"])(**runner.component_params({"attack": c}, "attack"))
                            .requirements("fedavg")) for c in self.attack_configs]
        self.defense = dict(defense or {"name": "none"})
        self.out = Path(out)
        self.out.joinpath("images").mkdir(parents=True, exist_ok=True)
        self.store = Store(self.out)
        self.env = runner.Environment()
        self._sent: dict[int, tuple[dict | None, dict[int, dict]]] = {}
        self._released: dict[int, list] = {}  # client -> its DP releases (noise multiplier, sample rate, steps)

    # ---- Flower's Strategy: delegated, with the round's broadcast remembered and its replies accounted and attacked
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        weights = {k: v.detach().clone() for k, v in arrays.to_torch_state_dict().items()} \
            if server_round % self.every == 0 else None
        self._sent[server_round] = (weights, {m.metadata.dst_node_id: dict(next(iter(
            m.content.config_records.values()), {})) for m in messages})
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        weights, configs = self._sent.pop(server_round, (None, {}))
        for reply in replies:
            try:
                self._take(server_round, weights, configs, reply)
            except Exception as exc:  # noqa: BLE001 -- e.g. a full disk under the run folder: logged, never raised
                log(WARNING, "giabench: round %d: could not attack or store a reply (%s: %s)", server_round,
                    type(exc).__name__, first_line(exc))
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log(INFO, "\t├── giabench: attacks %s every %d round(s) into %s",
            ", ".join(c["name"] for c in self.attack_configs), self.every, self.out)
        self.inner.summary()

    # ---- one reply: its setting, its DP releases (every round), its attacks (every ``every`` rounds)
    def _take(self, server_round: int, weights: dict | None, configs: dict[int, dict], reply: Message) -> None:
        node = reply.metadata.src_node_id
        if reply.has_error() or not reply.has_content():
            log(WARNING, "giabench: round %d, client %d sent no update (%s)", server_round, node,
                reply.error.reason if reply.has_error() else "no content")
            return
        client = self._client_id(node, reply)
        defense, params, batch, metrics, config, failure = self.defense, {}, 0, {}, {}, None
        try:
            config = {**configs.get(node, {}), **declaration(reply)}
            defense = declared_defense(config, self.defense)
            if defense.get("rounds", 1) != 1:
                raise ConfigError("a declared defense's rounds must be 1: the strategy composes the rounds it sees",
                                  field="rounds")
            metrics = dict(next(iter(reply.content.metric_records.values()), MetricRecord()))
            batch = int(metrics.get("num-examples", 0))
            if batch < 1:
                raise ConfigError("the reply's metrics carry no num-examples (the client's batch size)")
            params = fedavg_params(config)
            releases = self._account(client, defense, params, batch)
            received = next(iter(reply.content.array_records.values())).to_torch_state_dict()
        except Exception as exc:  # noqa: BLE001 -- a malformed reply is recorded, the training goes on
            failure = exc
            log(WARNING, "giabench: round %d, client %d: %s (its epsilon from here on undercounts this round)",
                server_round, client, first_line(exc))
        if weights is None:  # a round accounted, not attacked
            return
        for attack, threat_model in zip(self.attack_configs, self.threat_models, strict=True):
            cell = self._cell(server_round, client, attack, threat_model, defense, params, batch)
            if cell.id in self.store.finished():
                continue
            try:
                if failure is not None:
                    raise failure
                result = self._attack(cell, weights, received, releases, node, server_round, metrics, config)
            except Exception as exc:  # noqa: BLE001 -- one update's failure is recorded, never the app's end
                reason = f"{type(exc).__name__}: {first_line(exc)}".rstrip(": ")
                result = {**runner.identity(cell, self.env), "status": "failed", "note": reason}, [], None
            row, images, grid = result
            self._store(cell, row, images, grid)
            log(INFO if row["status"] == "ok" else WARNING, "giabench: round %d, client %d, %s: %s%s", server_round,
                client, attack["name"], row["status"], f" ({row['note']})" if row.get("note") else
                f", PSNR {row['psnr']:.2f} dB" if not math.isnan(row.get("psnr", math.nan)) else ", unscored")

    @staticmethod
    def _client_id(node: int, reply: Message) -> int:
        """The client's stable identity: the ``partition-id`` it reports (a simulation draws fresh node ids every
        run), else its node id."""
        try:
            metrics = next(iter(reply.content.metric_records.values()), {})
            return int(metrics["partition-id"]) if "partition-id" in metrics else node
        except (TypeError, ValueError):
            return node

    def _defended(self, defense: dict, params: dict, model: torch.nn.Module):
        """The declared defense's client on the FedAvg protocol of ``params`` (the server's model of the client)."""
        protocol = protocols.build("fedavg", params, model)
        return defenses.get(defense["name"])(protocol, **{k: v for k, v in defense.items() if k != "name"})

    def _account(self, client: int, defense: dict, params: dict, batch: int) -> list:
        """The client's DP releases so far, this reply's included: one share of a batch of ``batch`` records under
        ``params`` per round the strategy saw the client reply in."""
        counted = self._defended(defense, params, self.model)
        counted.account(torch.empty(batch, *self.imageset.shape))
        history = self._released.setdefault(client, [])
        history += counted.releases
        return list(history)

    def _cell(self, server_round, client, attack, threat_model, defense, params, batch) -> Cell:
        config = {"attack": attack, "defense": defense, "dataset": {"name": self.imageset.name},
                  "model": {"name": "flower", "state": f"round {server_round}", "mode": "eval"},
                  "protocol": {"name": "fedavg", **params}, "batch_size": batch, "seed": self.seed,
                  "selection": "flower", "threat_model": threat_model,
                  "flower": {"round": server_round, "client": client}}
        return Cell(config, cell_id(config))

    def _attack(self, cell: Cell, weights: dict, received: dict, releases: list, node: int, server_round: int,
                metrics: dict, declared: dict):
        config = cell.config
        model = copy.deepcopy(self.model)
        model.load_state_dict(weights)
        model.eval()
        message = update_of(model, weights, received)
        client = self._defended(config["defense"], runner.component_params(config, "protocol"), model)
        client.releases = releases
        client.observe(message)
        truth = self.truth(node, server_round, metrics) if self.truth else None
        x, y = truth if truth is not None else (None, None)
        labels = y.cpu() if y is not None and threats.grants(config["threat_model"], "labels") else None
        view = ServerView(model, client.protocol, message, dict(client.public), self.imageset.shape,
                          self.imageset.num_classes, config["batch_size"], labels)
        attacker = attack_registry.get(config["attack"]["name"])(**runner.component_params(config, "attack"))
        generator = torch.Generator().manual_seed(self.seed * 1000 + server_round)
        status, note, recon, extra, wall = runner.attack_view(attacker, view, client, generator)
        if "dp-epsilon" in declared:  # the client's own accountant (Opacus'), beside the defense's
            extra = {**extra, "client_epsilon": float(declared["dp-epsilon"]),
                     "client_delta": float(declared.get("dp-delta", math.nan))}
        return runner.result_row(cell, self.env, x, y, recon, status, note, extra, wall, client.cost())

    def _store(self, cell: Cell, row: dict, images: list, grid) -> None:
        if grid is not None:
            Image.fromarray(grid).save(self.out / "images" / f"{cell.id}.png")
        row.update(suite="flower", image=f"images/{cell.id}.png" if grid is not None else "",
                   finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
        self.store.write(row, images)
