"""DP-SGD on the client (Abadi et al., CCS 2016), with Opacus' privacy accountant.

Each local step clips every per-sample gradient to norm C and adds Gaussian noise to the sum (Abadi et al., Alg. 1):
    g = (1/B) * ( sum_i g_i * min(1, C / ||g_i||_2) + N(0, z^2 C^2 I) ),
the form Opacus' DPOptimizer computes. Under FedSGD the message is one such g; under FedAvg every local step uses it.
The adaptive attacker knows C, z and the protocol and matches the noise-free clipped mean. Epsilon is Opacus' RDP
accountant for noise multiplier z, sample rate q and the number of steps (by default one client update: q = 1 and the
protocol's local steps), at the stated delta.
"""

from __future__ import annotations

import torch

from giabench.defenses.base import Client, clip_update, gaussian_like, rdp_epsilon
from giabench.errors import ConfigError
from giabench.registry import defense


def clipped_sum(protocol, params, x, y, clip: float):
    """sum_i min(1, C/||g_i||) g_i over the per-sample gradients g_i (differentiable when x requires grad)."""
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(x.shape[0]):
        grads = clip_update(protocol.gradient(params, x[i:i + 1], y[i:i + 1]), clip)
        total = {k: total[k] + grads[k] for k in total}
    return total


@defense("dp-sgd")
class DPSGD(Client):
    """Per-sample clipping to ``clip`` and Gaussian noise of std ``noise_multiplier * clip`` on every local step."""

    def __init__(self, protocol, *, clip: float = 1.0, noise_multiplier: float = 1.0, delta: float = 1e-5,
                 sample_rate: float = 1.0, rounds: int = 1):
        super().__init__(protocol)
        if clip <= 0 or noise_multiplier < 0 or not 0 < delta < 1 or not 0 < sample_rate <= 1 or rounds < 1:
            raise ConfigError("defense dp-sgd: needs clip > 0, noise_multiplier >= 0, 0 < delta < 1, "
                              "0 < sample_rate <= 1 and rounds >= 1")
        self.clip, self.noise_multiplier, self.delta = clip, noise_multiplier, delta
        self.sample_rate, self.rounds = sample_rate, rounds
        self.steps = None
        self.public = {"clip": clip, "noise_multiplier": noise_multiplier}

    def rule(self, generator):
        def private_gradient(protocol, params, x, y):
            total = clipped_sum(protocol, params, x, y, self.clip)
            if generator is not None and self.noise_multiplier > 0:
                std = self.noise_multiplier * self.clip
                total = {k: v + gaussian_like(v, std, generator) for k, v in total.items()}
            return {k: v / x.shape[0] for k, v in total.items()}

        return private_gradient

    def share(self, x, y, generator):
        self.steps = self.protocol.local_steps(x)
        return super().share(x, y, generator)

    def cost(self):
        steps = (self.steps or 1) * self.rounds
        epsilon = rdp_epsilon([(self.noise_multiplier, self.sample_rate, steps)], self.delta)
        return {**super().cost(), "epsilon": epsilon, "delta": self.delta}
