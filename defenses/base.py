"""The client contract every defense implements (Kerckhoffs: the mechanism and its public parameters are known to the
server, the fresh randomness is not).

- ``share(x, y, generator)``: the message that really goes on the wire, drawing fresh noise from ``generator``;
- ``simulate(x, y)``: the attacker's differentiable model of ``share`` (the same transform, no fresh noise);
- ``public``: what the server legitimately knows after receiving the message (a sparsity mask, a noise scale ...);
- ``cost()``: epsilon and delta where the mechanism is differentially private, and bytes uploaded.
"""

from __future__ import annotations

import math

import torch

from giabench.protocols import GradRule, Protocol, Update


class Client:
    """The undefended client: shares the protocol's update as float32."""

    def __init__(self, protocol: Protocol):
        self.protocol = protocol
        self.public: dict = {}

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
        return {"epsilon": math.inf, "delta": 0.0, "bytes": 4 * self.numel()}


def clip_update(update: Update, bound: float) -> Update:
    """u * min(1, C / ||u||_2), the norm taken over all tensors together (differentiable)."""
    norm = torch.sqrt(sum(v.pow(2).sum() for v in update.values()))
    scale = torch.clamp(bound / (norm + 1e-12), max=1.0)
    return {k: scale * v for k, v in update.items()}


def rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` from Opacus' RDP accountant over ``(noise multiplier, sample rate, steps)`` releases;
    infinite when a release with steps has no noise, releases with zero steps are skipped."""
    from opacus.accountants import RDPAccountant

    if any(z == 0 and n > 0 for z, _, n in history):
        return math.inf
    accountant = RDPAccountant()
    accountant.history = [h for h in history if h[2] > 0]
    return float(accountant.get_epsilon(delta))


def gaussian_like(tensor: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """N(0, std^2) noise of ``tensor``'s shape drawn on the CPU from ``generator`` (device-independent numbers)."""
    noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
    return std * noise.to(tensor.device)
