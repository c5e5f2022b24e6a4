"""The server side of a defense over federated training rounds, as the utility harness drives it.

A round has two steps. ``collect``: every client k draws its batch (``draw(k)``), runs the protocol under the defense
and shares its message, which the server decodes into an update estimate (``Client.decode``: the message itself,
R^T y for a sketch, the mean over secure-aggregation shards); the bytes and DP releases of each are counted.
``aggregate``: the server applies their mean,
    FedSGD:  w <- w - server_lr * mean_k u_k          FedAvg:  w <- w - mean_k u_k   (u_k = w - w_k).
A defense with server-side state (DIFF2's running estimator, HideNseek's scores, HyperFL's hypernetwork) subclasses
``Federation`` in its own module, names it as its client's ``federation`` and overrides the step it changes: which
client object takes part (``client``: a persistent one holding its private state, or one bound to the server's
state) and what the server does with the messages (``aggregate``). The loop over the clients is written once, here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from giabench.components import Component
from giabench.privacy import rdp_epsilon
from giabench.protocols import Protocol, Update

Draw = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # client index -> its batch of this round


def mean_update(messages: list[Update], keys) -> Update:
    return {key: sum(m[key] for m in messages) / len(messages) for key in keys}


def load_parameters(model: torch.nn.Module, params: Update) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])


class Federation:
    """K clients of ``defense`` (built fresh each round from its ``round_params``) training ``model`` under
    ``protocol``, and a server that averages their decoded messages into the global model. ``uploaded`` counts the
    bytes of every message."""

    def __init__(self, defense: Component, model: torch.nn.Module, protocol: Component, clients: int, rounds: int,
                 server_lr: float):
        self.client_type, self.params, self.model = defense.factory, defense.params, model
        self.protocol_spec = protocol
        self.clients, self.rounds, self.server_lr = clients, rounds, server_lr
        self.uploaded = 0
        self.histories: list[list] = [[] for _ in range(clients)]  # every DP release of each client, all rounds
        self.last_cost: dict = {}

    @property
    def step(self) -> float:
        return self.server_lr if self.protocol_spec.name == "fedsgd" else 1.0

    def protocol(self) -> Protocol:
        """The protocol bound to the current global model."""
        return self.protocol_spec.build(self.model)

    def round(self, index: int, draw: Draw, generator: torch.Generator) -> None:
        self.aggregate(index, self.collect(index, draw, generator))

    def collect(self, index: int, draw: Draw, generator: torch.Generator) -> list[Update]:
        """Every client's decoded message of round ``index``, in client order; their bytes and DP releases
        counted."""
        protocol = self.protocol()
        messages = []
        for k, history in enumerate(self.histories):
            x, y = draw(k)
            client = self.client(k, index, protocol)
            released = len(client.releases)
            messages.append(client.decode(client.share(x, y, generator)))
            history += client.releases[released:]
            self.last_cost = client.cost()
            self.uploaded += self.last_cost["bytes"]
        return messages

    def client(self, k: int, index: int, protocol: Protocol):
        """The client object that client ``k`` trains with in round ``index`` (default: a fresh one on the current
        global model, with the round's parameters)."""
        return self.client_type(protocol, **self.client_type.round_params(self.params, index))

    def aggregate(self, index: int, messages: list[Update]) -> None:
        """The server's step with the round's messages: w <- w - step * mean_k u_k."""
        current = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        mean = mean_update(messages, current)
        load_parameters(self.model, {key: current[key] - self.step * mean[key] for key in current})

    def final_models(self) -> list[Update]:
        """The parameters whose test accuracy is the run's (one model, or one per client when personalized)."""
        return [{k: v.detach().clone() for k, v in self.model.named_parameters()}]

    def cost(self) -> dict:
        """The last message's cost, with epsilon composed over every release of the worst client in the run."""
        cost = dict(self.last_cost)
        if any(self.histories):
            cost["epsilon"] = max(rdp_epsilon(h, cost["delta"], cost["adjacency"]) for h in self.histories)
        return cost
