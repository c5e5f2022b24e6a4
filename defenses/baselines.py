"""The common baseline defenses: none, additive Gaussian noise, and top-k pruning of the update."""

from __future__ import annotations

import math

import torch

from giabench.checks import Param
from giabench.contracts import Axis, Client
from giabench.defenses.mechanisms import top_k_mask
from giabench.privacy import gaussian_like
from giabench.registry import defense


@defense("none")
class NoDefense(Client):
    """No defense: the server sees the protocol's update as it is."""


@defense("gauss")
class GaussianNoise(Client):
    """Additive noise without clipping, the usual ad-hoc baseline: m = u + N(0, sigma^2 I). No DP guarantee (the
    sensitivity of an unclipped update is unbounded), so epsilon is infinite. The attacker cannot reproduce the noise
    and matches the noise-free update."""

    strength = Axis.of("sigma", 0.001, 0.01, 0.1, 1.0)
    parameters = {"sigma": Param("std of the Gaussian noise added to every entry of the update", at_least=0)}

    def __init__(self, protocol, *, sigma: float = 0.01):
        super().__init__(protocol)
        self.sigma = sigma
        self.public = {"sigma": sigma}

    def transform(self, update, generator):
        if generator is None or self.sigma == 0:
            return update
        return {k: v + gaussian_like(v, self.sigma, generator) for k, v in update.items()}


@defense("prune")
class TopKPruning(Client):
    """Per-layer top-k sparsification (Deep Gradient Compression, Lin et al., ICLR 2018, without momentum or residual
    accumulation, i.e. a single round): keep the ``1 - fraction`` largest-magnitude entries of each tensor,
        m_l = u_l * 1[|u_l| >= t_l],  t_l = the k_l-th largest |u_l|,  k_l = ceil((1 - fraction) * |u_l|).
    The server receives values and indices, so the mask is public: the adaptive attacker matches mask * u(x_hat)."""

    strength = Axis.of("fraction", 0.5, 0.9, 0.99, 0.999)
    parameters = {"fraction": Param("the share of each tensor's entries removed (the smallest in magnitude)",
                                    at_least=0, below=1)}

    def __init__(self, protocol, *, fraction: float = 0.9):
        super().__init__(protocol)
        self.fraction = fraction

    def transform(self, update, generator):
        if generator is not None:
            self.public["mask"] = {k: self._mask(v) for k, v in update.items()}
        masks = self.public.get("mask")
        if masks is None:
            raise RuntimeError("prune: simulate() needs the mask of a shared message; call share() first")
        return {k: v * masks[k] for k, v in update.items()}

    def observe(self, message):
        """The mask is the message's support (a kept entry that is exactly 0 has measure zero)."""
        self.public["mask"] = {k: (v != 0).to(v.dtype) for k, v in message.items()}

    def _mask(self, tensor: torch.Tensor) -> torch.Tensor:
        return top_k_mask(tensor, math.ceil((1 - self.fraction) * tensor.numel()))

    def cost(self):
        kept = sum(math.ceil((1 - self.fraction) * p.numel()) for p in self.protocol.params.values())
        return {**super().cost(), "bytes": (self.value_bytes() + 4) * kept}  # a value + an int32 index
