"""The server side of a defense over federated training rounds, as the utility harness drives it.

Each round every client k draws its batch (``draw(k)``), runs the protocol under the defense and shares its message;
the server decodes each message into an update estimate (``Client.decode``: the message itself, R^T y for a sketch,
the mean over secure-aggregation shards) and applies their mean:
    FedSGD:  w <- w - server_lr * mean_k u_k          FedAvg:  w <- w - mean_k u_k   (u_k = w - w_k)
A defense with server-side state (DIFF2's running estimator, HideNseek's scores, HyperFL's hypernetwork) subclasses
``Federation`` in its own module and names it as its client's ``federation``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from giabench import protocols
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
    """K clients of ``client_type`` (built fresh each round from ``client_type.round_params``) and a server that
    averages their decoded messages into the global model. ``uploaded`` counts the bytes of every message."""

    def __init__(self, client_type, params: dict, model: torch.nn.Module, protocol: tuple[str, dict], clients: int,
                 rounds: int, server_lr: float):
        self.client_type, self.params, self.model = client_type, params, model
        self.protocol_name, self.protocol_params = protocol
        self.clients, self.rounds, self.server_lr = clients, rounds, server_lr
        self.uploaded = 0
        self.histories: list[list] = [[] for _ in range(clients)]  # every DP release of each client, all rounds
        self.last_cost: dict = {}

    @property
    def step(self) -> float:
        return self.server_lr if self.protocol_name == "fedsgd" else 1.0

    def protocol(self) -> Protocol:
        """The protocol bound to the current global model."""
        return protocols.build(self.protocol_name, self.protocol_params, self.model)

    def round(self, index: int, draw: Draw, generator: torch.Generator) -> None:
        protocol = self.protocol()
        current = {k: v.clone() for k, v in protocol.params.items()}
        params = self.client_type.round_params(self.params, index)
        messages = []
        for k, history in enumerate(self.histories):
            x, y = draw(k)
            client = self.client_type(protocol, **params)
            messages.append(client.decode(client.share(x, y, generator)))
            history += client.releases
            self.last_cost = client.cost()
            self.uploaded += self.last_cost["bytes"]
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
