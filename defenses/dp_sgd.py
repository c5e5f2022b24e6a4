"""DP-SGD on the client (Abadi et al., CCS 2016), with Opacus' privacy accountant.

Each local step draws a Poisson sample S of its minibatch (every record independently with probability q, the
``sample_rate``; q = 1 keeps them all), clips every per-sample gradient to norm C and adds Gaussian noise to the sum
(Abadi et al., Alg. 1, with Opacus' normalization by the expected batch size q n):
    g = (1 / (q n)) * ( sum_{i in S} g_i * min(1, C / ||g_i||_2) + N(0, z^2 C^2 I) ).
Under FedSGD the message is one such g; under FedAvg every local step uses it. The adaptive attacker knows C, z, q and
the protocol, not the fresh sample or noise, and matches the expectation, the noise-free clipped mean over the batch.

Privacy: every local step is one subsampled Gaussian release (z, q). Epsilon at ``delta`` is Opacus' RDP accountant
composed over every step of every share() and over the ``rounds`` rounds the client declares it takes part in, for
the stated ``adjacency`` (add-remove; replace-one halves z and needs q = 1). Counting every local step as a release
of every record is exact for full-batch steps (FedSGD, FedAvg with batch_size 0); with FedAvg minibatches a record
enters one step per epoch, and the count bounds that as long as the split into minibatches does not depend on the
other records (replace-one adjacency; under add-remove, a fixed position of each record).
"""

from __future__ import annotations

import torch

from giabench.checks import Param
from giabench.contracts import Axis, Client
from giabench.defenses.mechanisms import clip_samples
from giabench.privacy import ADJACENCY, DELTA, check_adjacency, dp_cost, gaussian_release
from giabench.registry import defense


def clipped_sum(protocol, params, x, y, clip: float):
    """sum_i min(1, C/||g_i||) g_i over the per-sample gradients g_i (differentiable when x requires grad)."""
    if x.shape[0] == 0:  # an empty Poisson sample
        return {k: torch.zeros_like(v) for k, v in params.items()}
    return {k: v.sum(0) for k, v in clip_samples(protocol.per_sample_gradients(params, x, y), clip).items()}


@defense("dp-sgd")
class DPSGD(Client):
    """Poisson sampling at ``sample_rate``, per-sample clipping to ``clip`` and Gaussian noise of std
    ``noise_multiplier * clip`` on every local step."""

    strength = Axis.of("noise_multiplier", 0.3, 1.0, 3.0, 10.0)
    parameters = {
        "clip": Param("C, the bound on each per-sample gradient's L2 norm", above=0),
        "noise_multiplier": Param("z: Gaussian noise of std z C is added to the sum of clipped gradients", at_least=0),
        "delta": DELTA,
        "sample_rate": Param("q, the Poisson sampling rate of each local step's records (1: every record)", above=0,
                             at_most=1),
        "rounds": Param("training rounds the client takes part in; epsilon composes all of them", at_least=1),
        "adjacency": ADJACENCY,
    }

    @classmethod
    def check(cls, params, protocol, batch_size):
        super().check(params, protocol, batch_size)
        check_adjacency("dp-sgd", params["adjacency"], params["sample_rate"])

    def __init__(self, protocol, *, clip: float = 1.0, noise_multiplier: float = 1.0, delta: float = 1e-5,
                 sample_rate: float = 1.0, rounds: int = 1, adjacency: str = "add-remove"):
        super().__init__(protocol)
        self.clip, self.noise_multiplier, self.delta = clip, noise_multiplier, delta
        self.sample_rate, self.rounds, self.adjacency = sample_rate, rounds, adjacency
        self.public = {"clip": clip, "noise_multiplier": noise_multiplier, "sample_rate": sample_rate}

    def rule(self, generator):
        q = self.sample_rate

        def private_gradient(protocol, params, x, y):
            n = x.shape[0]
            if generator is not None and q < 1:  # the fresh Poisson sample; the attacker matches its expectation
                keep = torch.rand(n, generator=generator) < q
                x, y = x[keep.to(x.device)], y[keep.to(y.device)]
            total = clipped_sum(protocol, params, x, y, self.clip)
            if generator is not None and self.noise_multiplier > 0:
                total = gaussian_release(total, self.noise_multiplier * self.clip, self.clip, generator)
            return {k: v / (n * (q if generator is not None else 1.0)) for k, v in total.items()}

        return private_gradient

    def account(self, x):
        self.releases.append((self.noise_multiplier, self.sample_rate, self.protocol.local_steps(x)))

    def cost(self):
        return {**super().cost(), **dp_cost(self.releases, self.rounds, self.delta, self.adjacency)}
