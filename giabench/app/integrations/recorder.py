"""Attacks on the updates real clients sent, recorded as giabench cells: the part of the Flower integration that does
not depend on Flower's API (``giabench.app.integrations.flower`` adapts its two strategy interfaces to it).

In round r the server knows the global weights w_0 it sent and the fit configuration of each client (local
``epochs``, local ``batch-size``, 0 meaning the whole batch, and ``lr``); a reply carries the client's weights w_K
and its ``num-examples``, the batch B. The update u = w_0 - w_K over the model's parameters is giabench's FedAvg
message (``giabench.protocols.FedAvg``), attacked through the same ``ServerView``, attack and scoring as a suite
cell. The defense the adaptive attacker simulates is declared: by the server, ``giabench-defense`` in the fit
configuration (a defense name or a JSON object ``{"name": ..., params}``; default the recorder's ``defense``), or by
the client, in its reply (``Reply.declared``: ``giabench-defense``, ``epochs``, ``batch-size``, ``lr`` replace the
fit configuration's), so a client that trains its own way says so; ``opacus_declaration`` writes an Opacus client's.
A DP client's epsilon is composed over every round the recorder saw it reply in (every local step of each, the
defense's own accountant), and the epsilon the client reports (``dp-epsilon``, ``dp-delta`` in its declaration:
Opacus' accountant) is stored beside it. Each attacked update is one cell in the run folder ``out`` (its id from
round, client, attack and defense, so a restarted app skips what is stored); ``giabench leaderboard OUT`` renders
them, with the leakage per round. Scored when ``truth(node_id, round, metrics)`` returns the client's private batch (a
simulation knows each client's data; or a client that opts in for an audit); otherwise the reconstructions are stored
unscored, and the report says so. Nothing raised while attacking reaches the caller: a reply that does not match the
model, a configuration without the fields the simulation needs, an attack that does not apply become a stored cell
with status ``failed`` or ``not-applicable`` and a WARNING line in the log.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from giabench import components, data, runner, threats
from giabench.components import Component
from giabench.contracts import ServerView
from giabench.errors import ConfigError, first_line
from giabench.runner import Outcome
from giabench.store import Store
from giabench.suite import Cell

CONFIG_FIELDS = {"epochs": ("epochs", "local-epochs"), "batch_size": ("batch-size", "batch_size"), "lr": ("lr",)}
Truth = Callable[[int, int, dict], "tuple[torch.Tensor, torch.Tensor] | None"]
GRANTED = {"priors", "labels", "training"}  # a passive server's knowledge: no surrogate data, statistics, active power
LOG = logging.getLogger("flwr")  # Flower's logger: the lines appear in the app's own log


def fedavg_params(config: dict) -> dict:
    """The FedAvg simulation's parameters from a client's fit configuration, naming the first missing field."""
    params = {}
    for name, keys in CONFIG_FIELDS.items():
        found = [config[k] for k in keys if k in config]
        if not found:
            raise ConfigError(f"the fit configuration has no {keys[0]!r}: the FedAvg simulation needs epochs, "
                              "batch-size and lr", field=keys[0])
        params[name] = found[0]
    try:
        return {"epochs": int(params["epochs"]), "batch_size": int(params["batch_size"]), "lr": float(params["lr"])}
    except (TypeError, ValueError):
        raise ConfigError(f"the fit configuration's epochs, batch-size and lr must be numbers, got {params}") from None


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
    """The declared defense from ``giabench-defense`` (a name or a JSON object with ``name``); rounds must be 1."""
    raw = config.get("giabench-defense")
    if raw is None:
        return dict(default)
    value = json.loads(raw) if str(raw).lstrip().startswith("{") else {"name": str(raw)}
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"giabench-defense must be a defense name or a JSON object with 'name', got {raw!r}")
    if value.get("rounds", 1) != 1:
        raise ConfigError("a declared defense's rounds must be 1: the recorder composes the rounds it sees",
                          field="rounds")
    return value


def opacus_declaration(optimizer, data_loader, epochs: int, delta: float) -> dict:
    """What a client that trained ``epochs`` epochs with Opacus (``PrivacyEngine.make_private``: its DPOptimizer and
    Poisson DPDataLoader) declares in its reply. Opacus' step on a Poisson sample of rate q (``data_loader``'s
    ``sample_rate``) of the n records, g = (sum_i clip_C(g_i) + N(0, z^2 C^2 I)) / (q n), is giabench's dp-sgd on a
    whole-batch FedAvg step with ``sample_rate`` q, and an epoch is len(data_loader) = 1/q such steps; clip C, noise
    multiplier z and lr are the optimizer's. Plain SGD with mean reduction and an integral expected batch q n only
    (otherwise Opacus' update is not this one)."""
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


@dataclass
class Reply:
    """A client's reply, as the strategy read it: its node id, metrics (``num-examples``, maybe ``partition-id``),
    its own declaration, and ``arrays()``, its weights by parameter name (raises on a malformed reply)."""

    node: int
    metrics: dict
    declared: dict
    arrays: Callable[[], dict]

    @property
    def client(self) -> int:
        """The client's stable identity: the ``partition-id`` it reports (a simulation draws fresh node ids every
        run), else its node id."""
        try:
            return int(self.metrics["partition-id"]) if "partition-id" in self.metrics else self.node
        except (TypeError, ValueError):
            return self.node


class LeakageRecorder:
    """Accounts and attacks replies into the run folder ``out``. ``model``: the app's network as a giabench classifier
    (its parameter names are the update's); ``dataset``: the giabench dataset of the clients' images (shape, classes,
    normalization); ``attacks``: attack names or configs (``{"name": "ig", "iterations": 200}``)."""

    def __init__(self, *, model: torch.nn.Module, dataset: str, attacks: Iterable, out: str | Path, every: int = 1,
                 defense: dict | None = None, truth: Truth | None = None, seed: int = 0):
        if every < 1:
            raise ConfigError(f"every must be at least 1, got {every}", field="every")
        self.model, self.every, self.truth, self.seed = model, every, truth, seed
        self.imageset = data.load(dataset)
        self.attacks = [  # bad names and parameters fail here, before any round
            components.from_config("attack", {"name": a} if isinstance(a, str) else dict(a)) for a in attacks]
        self.needs = [attack.build().requirements("fedavg") for attack in self.attacks]
        self.defense = dict(defense or {"name": "none"})
        self.out = Path(out)
        self.store = Store(self.out)
        self.env = runner.Environment()
        self._released: dict[int, list] = {}  # client -> its DP releases (noise multiplier, sample rate, steps)

    def describe(self) -> str:
        return f"attacks {', '.join(a.name for a in self.attacks)} every {self.every} round(s) into {self.out}"

    def attacks_round(self, server_round: int) -> bool:
        return server_round % self.every == 0

    def take_all(self, server_round: int, weights: dict | None, configs: dict[int, dict],
                 replies: Iterable[Reply]) -> None:
        """Every reply of a round (``weights`` None: a round accounted, not attacked); whatever one raises is
        logged, never raised (e.g. a full disk under the run folder)."""
        for reply in replies:
            try:
                self.take(server_round, weights, configs.get(reply.node, {}), reply)
            except Exception as exc:  # noqa: BLE001 -- never raised into the federated training
                LOG.warning("giabench: round %d: could not attack or store a reply (%s: %s)", server_round,
                            type(exc).__name__, first_line(exc))

    def take(self, server_round: int, weights: dict | None, sent: dict, reply: Reply) -> None:
        """One reply: its setting and DP releases (every round), its attacks (``weights`` given)."""
        client = reply.client
        batch, config, failure, releases = 0, {}, None, None
        protocol = Component("protocol", "fedavg")
        defense = Component("defense", str(self.defense.get("name")), {})  # named as declared until resolved
        try:
            config = {**sent, **reply.declared}
            declared = declared_defense(config, self.defense)
            defense = Component("defense", str(declared["name"]), {})
            batch = int(reply.metrics.get("num-examples", 0))
            if batch < 1:
                raise ConfigError("the reply's metrics carry no num-examples (the client's batch size)")
            protocol = components.protocol("fedavg", fedavg_params(config))
            defense = components.from_config("defense", declared, protocol=protocol, batch_size=batch)
            releases = self._account(client, defense, protocol, batch)
            received = reply.arrays()
        except Exception as exc:  # noqa: BLE001 -- a malformed reply is recorded, the training goes on
            failure = exc
            LOG.warning("giabench: round %d, client %d: %s%s", server_round, client, first_line(exc),
                        " (its epsilon from here on leaves this round out)" if releases is None else "")
        if weights is None:
            return
        done = self.store.finished()
        cells = [c for c in (self._cell(server_round, client, attack, threats.minimal(needs), defense, protocol,
                                        batch) for attack, needs in zip(self.attacks, self.needs, strict=True))
                 if c.id not in done]
        if cells and failure is None:
            try:  # once per reply: the broadcast model, the message, the private batch
                model = copy.deepcopy(self.model)
                model.load_state_dict(weights)
                model.eval()
                message = update_of(model, weights, received)
                truth = self.truth(reply.node, server_round, reply.metrics) if self.truth else None
            except Exception as exc:  # noqa: BLE001 -- a reply that does not fit the model is recorded
                failure = exc
        for cell in cells:
            try:
                if failure is not None:
                    raise failure
                result = self._attack(cell, model, message, releases, truth, server_round, config)
            except Exception as exc:  # noqa: BLE001 -- one update's failure is recorded, never the app's end
                result = runner.failed_result(cell, self.env, exc)
            runner.store_result(self.store, self.out, "flower", cell, result)
            row = result[0]
            LOG.log(logging.INFO if row["status"] == "ok" else logging.WARNING, "giabench: round %d, client %d, %s: "
                    "%s%s", server_round, client, cell.attack.name, row["status"], f" ({row['note']})"
                    if row.get("note") else f", PSNR {row['psnr']:.2f} dB"
                    if not math.isnan(row.get("psnr", math.nan)) else ", unscored")

    def _account(self, client: int, defense: Component, protocol: Component, batch: int) -> list:
        """The client's DP releases so far, this reply's included: one share of a batch of ``batch`` records under
        ``protocol`` per round the recorder saw the client reply in."""
        counted = defense.build(protocol.build(self.model))
        counted.account(torch.empty(batch, *self.imageset.shape))
        history = self._released.setdefault(client, [])
        history += counted.releases
        return list(history)

    def _cell(self, server_round, client, attack, threat_model, defense, protocol, batch) -> Cell:
        return Cell(Component("dataset", self.imageset.name),
                    Component("model", "flower", {"state": f"round {server_round}", "mode": "eval"}), protocol,
                    defense, attack, batch, self.seed, "flower", threat_model,
                    context={"flower": {"round": server_round, "client": client}})

    def _attack(self, cell: Cell, model: torch.nn.Module, message: dict, releases: list, truth, server_round: int,
                declared: dict):
        """One attack on one reply's ``message``; ``truth``: the client's private batch, or None (unscored)."""
        client = cell.defense.build(cell.protocol.build(model))
        client.releases = releases
        client.observe(message)
        labels = truth[1].cpu() if truth is not None and threats.grants(cell.threat_model, "labels") else None
        view = ServerView(model, client.protocol, message, dict(client.public), self.imageset.shape,
                          self.imageset.num_classes, cell.batch_size, labels)
        attacker = cell.attack.build()
        missing = sorted(attacker.requirements("fedavg") - GRANTED)
        reason = attacker.applies(model, self.imageset.shape, "fedavg", cell.batch_size) or (
            f"the recorder attacks as a passive server of a running app; the attack needs {missing[0]} "
            f"({threats.CAPABILITIES[missing[0]]})" if missing else None)
        if reason:
            outcome = Outcome.not_applicable(reason, client.cost())
        else:
            generator = torch.Generator().manual_seed(self.seed * 1000 + server_round)
            outcome = runner.attack_view(attacker, view, client, generator)
        if "dp-epsilon" in declared:  # the client's own accountant (Opacus'), beside the defense's
            outcome.extra = {**outcome.extra, "client_epsilon": float(declared["dp-epsilon"]),
                             "client_delta": float(declared.get("dp-delta", math.nan))}
        return runner.result_row(cell, self.env, outcome, truth)
