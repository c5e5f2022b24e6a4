"""Leakage measured inside a Flower app (``flwr`` 1.42, its Message API): ``LeakageStrategy`` wraps any Flower
strategy (FedAvg, FedProx, ...), leaves the aggregation to it, and every ``every`` rounds hands each client's update
to giabench's attacks as the FedAvg message it is.

The server side of round r knows the global weights w_0 it sent and the fit configuration of each client (local
``epochs``, local ``batch-size``, 0 meaning the whole batch, and ``lr``); a reply carries the client's weights w_K
and its ``num-examples``, the batch B. The update u = w_0 - w_K over the model's parameters is giabench's FedAvg
message (``giabench.protocols.FedAvg``), attacked through the same ``ServerView``, attack and scoring as a suite
cell; the client's declared defense (``giabench-defense`` in its fit configuration, a defense name or a JSON object
``{"name": ..., params}``; default the strategy's ``defense``) is what the adaptive attacker simulates. Each attacked
update is one cell in the run folder ``out`` (its id from round, client, attack and defense, so a restarted app skips
what is stored); ``giabench leaderboard OUT`` renders them. Scored when ``truth(node_id, round, metrics)`` returns
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
        for config in self.attack_configs:  # bad names and parameters fail here, before any round
            attack_registry.get(config["name"])(**runner.component_params({"attack": config}, "attack"))
        self.defense = dict(defense or {"name": "none"})
        self.out = Path(out)
        self.out.joinpath("images").mkdir(parents=True, exist_ok=True)
        self.store = Store(self.out)
        self.env = runner.Environment()
        self._sent: dict[int, tuple[dict, dict[int, dict]]] = {}

    # ---- Flower's Strategy: delegated, with the round's broadcast remembered and its replies attacked
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if server_round % self.every == 0:
            sent = {m.metadata.dst_node_id: dict(next(iter(m.content.config_records.values()), {}))
                    for m in messages}
            self._sent[server_round] = ({k: v.detach().clone() for k, v in arrays.to_torch_state_dict().items()},
                                        sent)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        if server_round in self._sent:
            weights, configs = self._sent.pop(server_round)
            for reply in replies:
                try:
                    self._attack_reply(server_round, weights, configs, reply)
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

    # ---- the attack of one reply
    def _attack_reply(self, server_round: int, weights: dict, configs: dict[int, dict], reply: Message) -> None:
        node = reply.metadata.src_node_id
        if reply.has_error() or not reply.has_content():
            log(WARNING, "giabench: round %d, client %d sent no update (%s)", server_round, node,
                reply.error.reason if reply.has_error() else "no content")
            return
        config = configs.get(node, {})
        defense = self.defense
        try:
            defense = declared_defense(config, self.defense)
            received = next(iter(reply.content.array_records.values())).to_torch_state_dict()
            metrics = next(iter(reply.content.metric_records.values()), MetricRecord())
            batch = int(metrics.get("num-examples", 0))
            if batch < 1:
                raise ConfigError("the reply's metrics carry no num-examples (the client's batch size)")
            params = fedavg_params(config)
            setting = None
        except Exception as exc:  # noqa: BLE001 -- a malformed reply is recorded, the training goes on
            params, batch, setting = {}, 0, exc
        client = self._client_id(node, reply)
        for attack in self.attack_configs:
            cell = self._cell(server_round, client, attack, defense, params, batch)
            if cell.id in self.store.finished():
                continue
            try:
                if setting is not None:
                    raise setting
                result = self._attack(cell, weights, received, server_round, node, dict(metrics))
            except Exception as exc:  # noqa: BLE001 -- one update's failure is recorded, never the app's end
                reason = f"{type(exc).__name__}: {first_line(exc)}".rstrip(": ")
                result = {**runner.identity(cell, self.env), "status": "failed", "note": reason}, [], None
            row, images, grid = result
            self._store(cell, row, images, grid)
            log(INFO if row["status"] == "ok" else WARNING, "giabench: round %d, client %d, %s: %s%s", server_round,
                node, attack["name"], row["status"], f" ({row['note']})" if row.get("note") else
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

    def _cell(self, server_round, node, attack, defense, params, batch) -> Cell:
        attacker = attack_registry.get(attack["name"])(**runner.component_params({"attack": attack}, "attack"))
        config = {"attack": attack, "defense": defense, "dataset": {"name": self.imageset.name},
                  "model": {"name": "flower", "state": f"round {server_round}", "mode": "eval"},
                  "protocol": {"name": "fedavg", **params}, "batch_size": batch, "seed": self.seed,
                  "selection": "flower", "threat_model": threats.minimal(attacker.requirements("fedavg")),
                  "flower": {"round": server_round, "client": node}}
        return Cell(config, cell_id(config))

    def _attack(self, cell: Cell, weights: dict, received: dict, server_round: int, node: int, metrics: dict):
        config = cell.config
        model = copy.deepcopy(self.model)
        model.load_state_dict(weights)
        model.eval()
        message = update_of(model, weights, received)
        protocol = protocols.build("fedavg", runner.component_params(config, "protocol"), model)
        client = defenses.get(config["defense"]["name"])(
            protocol, **runner.component_params(config, "defense"))
        truth = self.truth(node, server_round, metrics) if self.truth else None
        x, y = truth if truth is not None else (None, None)
        labels = y.cpu() if y is not None and threats.grants(config["threat_model"], "labels") else None
        view = ServerView(model, protocol, message, dict(client.public), self.imageset.shape,
                          self.imageset.num_classes, config["batch_size"], labels)
        attacker = attack_registry.get(config["attack"]["name"])(**runner.component_params(config, "attack"))
        generator = torch.Generator().manual_seed(self.seed * 1000 + server_round)
        status, note, recon, extra, wall = runner.attack_view(attacker, view, client, generator)
        return runner.result_row(cell, self.env, x, y, recon, status, note, extra, wall, client.cost())

    def _store(self, cell: Cell, row: dict, images: list, grid) -> None:
        if grid is not None:
            Image.fromarray(grid).save(self.out / "images" / f"{cell.id}.png")
        row.update(suite="flower", image=f"images/{cell.id}.png" if grid is not None else "",
                   finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
        self.store.write(row, images)
