"""Secure aggregation (Bonawitz et al., CCS 2017): the server learns only the sum of the clients' updates,
    m = sum_{k=1..K} u(x_k, y_k),
never an individual u(x_k, y_k). The cell's batch is split into K contiguous, near-equal shards, one per simulated
client, each running the protocol on its own shard. The masking itself is exact (pairwise masks cancel), so it is
modelled by its result; each client still uploads a full-size (masked) update. The adaptive attacker knows K and the
shard sizes and matches the sum.
"""

from __future__ import annotations

from giabench.checks import Param
from giabench.contracts import Axis, Client
from giabench.errors import ConfigError
from giabench.registry import defense


def shards(n: int, clients: int) -> list[slice]:
    """K contiguous, near-equal shards of n rows (each holds at least one row when n >= K)."""
    bounds = [round(i * n / clients) for i in range(clients + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@defense("secagg")
class SecureAggregation(Client):
    """The server sees the sum of ``clients`` updates, each from one shard of the batch."""

    shuffles = False  # each simulated client would shuffle its own shard
    strength = Axis.of("clients", 2, 4, 8, 16)
    parameters = {"clients": Param("K, the clients whose updates the server receives only as a sum", at_least=1)}

    def __init__(self, protocol, *, clients: int = 4):
        super().__init__(protocol)
        self.clients = clients
        self.public = {"clients": clients}

    @classmethod
    def check(cls, params, protocol, batch_size):
        super().check(params, protocol, batch_size)
        if batch_size < params["clients"]:
            raise ConfigError(f"defense secagg: the batch ({batch_size}) must hold at least one image per client "
                              f"({params['clients']})")

    def update(self, x, y, rule, orders=None):
        if orders is not None:
            raise ValueError("defense secagg: the simulated clients visit their shards in order (no epoch orders)")
        total = None
        for part in shards(x.shape[0], self.clients):
            update = self.protocol.update(x[part], y[part], rule)
            total = update if total is None else {k: total[k] + update[k] for k in total}
        return total

    def decode(self, message):
        """The mean update of the simulated clients (the server divides the sum by K)."""
        return {k: v / self.clients for k, v in message.items()}
