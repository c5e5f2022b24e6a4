"""Leakage measured inside a Flower app (``flwr`` 1.42): a strategy wrapper that leaves the aggregation to any Flower
strategy (FedAvg, FedProx, ...) and every ``every`` rounds hands each client's update to giabench's attacks as the
FedAvg message it is (``giabench.app.integrations.recorder``: what is attacked, declared, composed and stored).

- ``LeakageStrategy`` wraps a strategy of Flower's current Message API (``flwr.serverapp.strategy``); a client
  declares what it did in a ConfigRecord ``giabench`` of its reply (``DECLARATION``).
- ``LegacyLeakageStrategy`` wraps a strategy of the legacy interface (``flwr.server.strategy.Strategy``: FitIns,
  FitRes, ``ServerApp(server_fn=...)``); its parameters are the model's ``state_dict`` values in order, as Flower's
  examples send them, and a client declares in its fit metrics under keys ``giabench.<field>`` (``legacy_metrics``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common import parameters_to_ndarrays
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from giabench.app.integrations.recorder import LOG, LeakageRecorder, Reply
from giabench.errors import ConfigError

DECLARATION = "giabench"  # the ConfigRecord of a reply in which a client declares how it trained
LEGACY_PREFIX = "giabench."  # the fit-metrics keys of a legacy client's declaration


def declaration(reply: Message) -> dict:
    """The client's own declaration: the fields of the reply's ConfigRecord ``giabench`` (empty without one)."""
    return dict(reply.content.config_records.get(DECLARATION, {})) if reply.has_content() else {}


def _first(records) -> dict:
    return dict(next(iter(records.values()), {}))


class LeakageStrategy(Strategy):
    """``inner`` aggregates; the recorder (built from ``recorder``'s keyword arguments: model, dataset, attacks, out,
    every, defense, truth, seed) accounts every reply and attacks those of every ``every``-th round."""

    def __init__(self, inner: Strategy, **recorder):
        self.inner, self.recorder = inner, LeakageRecorder(**recorder)
        self._sent: dict[int, tuple[dict | None, dict[int, dict]]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        weights = {k: v.detach().clone() for k, v in arrays.to_torch_state_dict().items()} \
            if self.recorder.attacks_round(server_round) else None
        self._sent[server_round] = (weights, {m.metadata.dst_node_id: _first(m.content.config_records)
                                              for m in messages})
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        weights, configs = self._sent.pop(server_round, (None, {}))
        read = []
        for reply in replies:
            if reply.has_error() or not reply.has_content():
                LOG.warning("giabench: round %d, client %d sent no update (%s)", server_round,
                            reply.metadata.src_node_id, reply.error.reason if reply.has_error() else "no content")
                continue
            read.append(Reply(reply.metadata.src_node_id, _first(reply.content.metric_records), declaration(reply),
                              lambda r=reply: next(iter(r.content.array_records.values())).to_torch_state_dict()))
        self.recorder.take_all(server_round, weights, configs, read)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        LOG.info("\t├── giabench: %s", self.recorder.describe())
        self.inner.summary()


def legacy_metrics(declared: dict) -> dict:
    """A declaration (e.g. ``recorder.opacus_declaration``'s) as fit metrics of a legacy client."""
    return {LEGACY_PREFIX + k: v for k, v in declared.items()}


def named(model: torch.nn.Module, arrays: list) -> dict:
    """Legacy parameters (the ``state_dict`` values in order) by name, naming a count that differs."""
    names = list(model.state_dict())
    if len(arrays) != len(names):
        raise ConfigError(f"the client sent {len(arrays)} arrays, the global model's state_dict has {len(names)}")
    return {name: torch.as_tensor(array) for name, array in zip(names, arrays, strict=True)}


class LegacyLeakageStrategy(LegacyStrategy):
    """The same for Flower's legacy ``Strategy`` interface: ``inner`` aggregates, the recorder attacks."""

    def __init__(self, inner: LegacyStrategy, **recorder):
        self.inner, self.recorder = inner, LeakageRecorder(**recorder)
        self._sent: dict[int, tuple[dict | None, dict[int, dict]]] = {}

    def initialize_parameters(self, client_manager):
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        weights = None
        if self.recorder.attacks_round(server_round):
            weights = named(self.recorder.model, parameters_to_ndarrays(parameters))
        self._sent[server_round] = (weights, {_node(proxy): dict(fit.config) for proxy, fit in instructions})
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        weights, configs = self._sent.pop(server_round, (None, {}))
        read = []
        for proxy, fit in results:
            metrics = {k: v for k, v in fit.metrics.items() if not k.startswith(LEGACY_PREFIX)}
            metrics["num-examples"] = fit.num_examples
            declared = {k[len(LEGACY_PREFIX):]: v for k, v in fit.metrics.items() if k.startswith(LEGACY_PREFIX)}
            read.append(Reply(_node(proxy), metrics, declared,
                              lambda f=fit: named(self.recorder.model, parameters_to_ndarrays(f.parameters))))
        self.recorder.take_all(server_round, weights, configs, read)
        return self.inner.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        return self.inner.evaluate(server_round, parameters)


def _node(proxy) -> int:
    """A legacy client proxy's node id (its cid, a number in Flower's engines; a stable hash otherwise)."""
    try:
        return int(proxy.cid)
    except (TypeError, ValueError):
        return zlib.crc32(str(proxy.cid).encode())
