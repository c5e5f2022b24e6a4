"""The client contract every defense implements (Kerckhoffs: the mechanism and its public parameters are known to the
server, the fresh randomness is not).

- ``share(x, y, generator)``: the message that really goes on the wire, drawing fresh noise from ``generator``;
- ``simulate(x, y)``: the attacker's differentiable model of ``share`` (the same transform, no fresh noise);
- ``public``: what the server legitimately knows after receiving the message (a sparsity mask, a noise scale ...);
- ``cost()``: bytes uploaded, and where the mechanism is differentially private epsilon, delta and the adjacency they
  hold for, composed over every release the client made (``releases``), times the rounds it declares.

Adjacency (``ADJACENCIES``): ``add-remove`` (a dataset with one record more or less; Opacus' convention) or
``replace-one`` (one record swapped, the batch size fixed and known). Replacing a record moves a sum of clipped
per-record terms by up to 2C instead of C, so the same noise std z C is a Gaussian mechanism with noise multiplier
z / 2 under replace-one.
"""

from __future__ import annotations

import math

import torch

from giabench.errors import ConfigError
from giabench.protocols import GradRule, Protocol, Update

ADJACENCIES = ("add-remove", "replace-one")
Release = tuple[float, float, int]  # (noise multiplier, sample rate, steps): one entry of an accountant's history


class Client:
    """The undefended client: shares the protocol's update as float32. ``vmappable``: ``simulate`` can run under
    ``torch.func.vmap`` (over an attacker's restarts); False where it trains with autograd inside."""

    vmappable = True

    def __init__(self, protocol: Protocol):
        self.protocol = protocol
        self.public: dict = {}
        self.releases: list[Release] = []  # DP releases of every share() so far (empty: not a DP mechanism)

    @classmethod
    def check_cell(cls, params: dict, protocol: str, batch_size: int) -> None:
        """Refuse, before any cell runs, a protocol or batch size the defense cannot serve."""

    def rule(self, generator: torch.Generator | None) -> GradRule | None:
        """The per-step gradient rule (``None``: the plain mean gradient); ``generator=None`` means simulate."""
        return None

    def transform(self, update: Update, generator: torch.Generator | None) -> Update:
        """Post-processing of the finished update; ``generator=None`` means simulate."""
        return update

    def update(self, x: torch.Tensor, y: torch.Tensor, rule: GradRule | None) -> Update:
        """The update before post-processing (secure aggregation overrides it to sum several clients)."""
        return self.protocol.update(x, y, rule)

    def share(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Update:
        update = self.update(x.detach(), y, self.rule(generator))
        return {k: v.detach() for k, v in self.transform(update, generator).items()}

    def simulate(self, x: torch.Tensor, y: torch.Tensor) -> Update:
        return self.transform(self.update(x, y, self.rule(None)), None)

    def decode(self, message: Update) -> Update:
        """The server's estimate of the client's update from its message (the utility harness averages these)."""
        return message

    def numel(self) -> int:
        return sum(p.numel() for p in self.protocol.params.values())

    def cost(self) -> dict:
        return {"epsilon": math.inf, "delta": 0.0, "adjacency": "", "bytes": 4 * self.numel()}


def check_adjacency(name: str, adjacency: str, sample_rate: float = 1.0) -> None:
    if adjacency not in ADJACENCIES:
        raise ConfigError(f"defense {name}: adjacency must be one of {', '.join(ADJACENCIES)}, got {adjacency!r}")
    if adjacency == "replace-one" and sample_rate < 1:
        raise ConfigError(f"defense {name}: the accountant's subsampled bound holds for add-remove adjacency only; "
                          "use sample_rate 1 with replace-one")


def dp_cost(releases: list[Release], rounds: int, delta: float, adjacency: str) -> dict:
    """Epsilon, delta and adjacency of ``rounds`` repetitions of ``releases`` (no release yet: epsilon 0)."""
    return {"epsilon": rdp_epsilon(releases * rounds, delta, adjacency), "delta": delta, "adjacency": adjacency}


def clip_update(update: Update, bound: float) -> Update:
    """u * min(1, C / ||u||_2), the norm taken over all tensors together (differentiable)."""
    norm = torch.sqrt(sum(v.pow(2).sum() for v in update.values()))
    scale = torch.clamp(bound / (norm + 1e-12), max=1.0)
    return {k: scale * v for k, v in update.items()}


def clip_samples(grads: Update, bound: float) -> Update:
    """g_i * min(1, C / ||g_i||_2) for every row i of stacked per-sample gradients, the norm taken over all tensors
    of a sample together (differentiable)."""
    norms = torch.sqrt(sum(v.pow(2).flatten(1).sum(1) for v in grads.values()))
    scale = torch.clamp(bound / (norms + 1e-12), max=1.0)
    return {k: v * scale.view(-1, *[1] * (v.dim() - 1)) for k, v in grads.items()}


def rdp_epsilon(history: list[Release], delta: float, adjacency: str = "add-remove") -> float:
    """Epsilon at ``delta`` from Opacus' RDP accountant over ``(noise multiplier, sample rate, steps)`` releases,
    composed; noise multipliers are halved under replace-one adjacency. Infinite when a release with steps has no
    noise; 0 when nothing was released."""
    from opacus.accountants import RDPAccountant

    history = [(z / 2 if adjacency == "replace-one" else z, q, n) for z, q, n in history if n > 0]
    if any(z == 0 for z, _, _ in history):
        return math.inf
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = history
    return float(accountant.get_epsilon(delta))


def gaussian_like(tensor: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """N(0, std^2) noise of ``tensor``'s shape drawn on the CPU from ``generator`` (device-independent numbers)."""
    noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
    return std * noise.to(tensor.device)
