"""DIFF2 (Murata & Suzuki, "DIFF2: Differential Private Optimization via Gradient Differences for Nonconvex
Distributed Learning", ICML 2023, Alg. 1, GD routine).

Every ``period`` T rounds a node restarts the estimator with a clipped, noised mean of per-sample gradients at the
current iterate; in between it sends clipped, noised means of per-sample gradient *differences* between the two
latest iterates, with clip radius and noise scaled by Delta_r = ||x_{r-1} - x_{r-2}||:
    restart:     d = ClippedMean({grad l(x_{r-1}, z)}, C1)                             + N(0, (z1 C1 / n)^2 I)
    difference:  d = ClippedMean({grad l(x_{r-1}, z) - grad l(x_{r-2}, z)}, C2 Delta_r) + N(0, (z2 C2 Delta_r / n)^2 I)
    server:      v_r = d (restart) or v_{r-1} + d (difference);   x_r = x_{r-1} - eta v_r,
with ClippedMean({u_i}, C) = (1/n) sum_i min(1, C/||u_i||) u_i over the node's n samples (full local batch).

In a cell the broadcast model is the latest iterate x; the ``rounds`` iterates before it since the last restart are
public (broadcast earlier). We draw them from a public seed as x_{j-1} = x_j + ``step`` ||x|| u_j with u_j random unit
directions (our design choice: the paper's iterates depend on every node's data, which a one-client cell lacks).
``view`` is what the attacker matches: ``difference`` (the last difference message alone, both iterates known: the
per-round attack) or ``telescoped`` (the restart plus every difference since, which is the server's running
estimator v_r ~ grad f(x): the multi-round attack).

Privacy (per node, one record, q = 1): ceil(R/T) Gaussian releases with noise multiplier z1 and R - ceil(R/T) with
z2 over ``total_rounds`` R, composed by Opacus' RDP accountant, epsilon at ``delta``, for the stated ``adjacency``:
add-remove (the clipped sum moves by C; the node's n is public, so the division by it is post-processing) or
replace-one (2C, so z1 and z2 count half). Each share() records its releases in ``releases``.
"""

from __future__ import annotations

import math

import torch

from giabench import checks
from giabench.checks import Param
from giabench.contracts import Axis, Client
from giabench.defenses.mechanisms import clip_samples
from giabench.errors import ConfigError
from giabench.federation import Federation, load_parameters, mean_update
from giabench.privacy import ADJACENCY, DELTA, gaussian_release, rdp_epsilon
from giabench.protocols import Update
from giabench.registry import defense

VIEWS = ("telescoped", "difference")


def clipped_sum(vectors: Update, clip: float) -> Update:
    """sum_i min(1, C/||u_i||) u_i over stacked per-sample vectors u_i, differentiable; n times DIFF2's Alg. 2
    ClippedMean."""
    return {k: v.sum(0) for k, v in clip_samples(vectors, clip).items()}


def _released_mean(total: Update, n: int, noise: float, bound: float, generator) -> Update:
    """(clipped sum + N(0, (z bound)^2 I)) / n: the Gaussian release of the sum (sensitivity ``bound``), divided by
    the node's public sample count n."""
    if generator is not None and noise > 0:
        total = gaussian_release(total, noise * bound, bound, generator)
    return {k: v / n for k, v in total.items()}


def restart_message(protocol, params, x, y, clip, noise, generator) -> Update:
    total = clipped_sum(protocol.per_sample_gradients(params, x, y), clip)
    return _released_mean(total, x.shape[0], noise, clip, generator)


def difference_message(protocol, new, old, x, y, clip, noise, generator) -> Update:
    distance = float(torch.sqrt(sum((new[k] - old[k]).pow(2).sum() for k in new)))
    at_new, at_old = protocol.per_sample_gradients(new, x, y), protocol.per_sample_gradients(old, x, y)
    total = clipped_sum({k: at_new[k] - at_old[k] for k in at_new}, clip * distance)
    return _released_mean(total, x.shape[0], noise, clip * distance, generator)


def epsilon(noise1: float, noise2: float, period: int, total_rounds: int, delta: float,
            adjacency: str = "add-remove") -> float:
    """Opacus RDP accountant over ceil(R/T) restart and R - ceil(R/T) difference releases (sample rate 1)."""
    restarts = math.ceil(total_rounds / period)
    return rdp_epsilon([(noise1, 1.0, restarts), (noise2, 1.0, total_rounds - restarts)], delta, adjacency)


class DIFF2Federation(Federation):
    """DIFF2-GD's server over training rounds: every node sends a restart (every ``period`` rounds) or a gradient
    difference between the two latest iterates; the server keeps the running estimator v_r (restarted with the
    restarts) and steps x_r = x_{r-1} - server_lr v_r whatever the protocol. The clients' epsilon composes the
    run's ``rounds`` (``total_rounds``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.estimator: Update | None = None
        self.previous: Update | None = None  # x_{r-2}, the iterate before the current one

    def restarts(self, index: int) -> bool:
        return index % self.params["period"] == 0 or self.previous is None

    def client(self, k, index, protocol):
        """A node on the server's real iterates: a restart at x_{r-1}, or the difference from x_{r-2}."""
        node = self.client_type(protocol, **{**self.params, "total_rounds": self.rounds})
        return node.follow(None if self.restarts(index) else self.previous, dict(protocol.params))

    def aggregate(self, index, messages):
        current = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        mean = mean_update(messages, current)
        self.estimator = mean if self.restarts(index) else {key: self.estimator[key] + mean[key] for key in mean}
        self.previous = current
        load_parameters(self.model, {key: current[key] - self.server_lr * self.estimator[key] for key in current})


@defense("diff2")
class DIFF2(Client):
    """DIFF2-GD on one node: restart every ``period`` rounds, clipped noisy gradient differences in between."""

    federation = DIFF2Federation
    strength = Axis("noise1 = noise2", tuple({"noise1": z, "noise2": z} for z in (0.3, 1.0, 3.0, 10.0)))
    parameters = {
        "clip1": Param("C1, the per-sample gradient norm bound of a restart", above=0),
        "clip2": Param("C2: a difference's per-sample bound is C2 Delta_r, Delta_r = ||x_{r-1} - x_{r-2}||", above=0),
        "noise1": Param("z1: a restart's noise std is z1 C1 / n", at_least=0),
        "noise2": Param("z2: a difference's noise std is z2 C2 Delta_r / n", at_least=0),
        "period": Param("T, rounds between restarts of the estimator", at_least=1),
        "rounds": Param("difference rounds since the last restart in the cell's view (public iterates drawn)",
                        at_least=0),
        "step": Param("distance between the cell's public iterates, relative to ||x||", above=0),
        "view": Param("what the attacker matches: telescoped (the restart plus every difference since: v_r) or "
                      "difference (the last difference alone)", choices=VIEWS),
        "total_rounds": Param("R, the training rounds epsilon composes (ceil(R/T) restarts, the rest differences)",
                              at_least=1),
        "delta": DELTA,
        "seed": Param("the public seed of the cell's iterates"),
        "adjacency": ADJACENCY,
    }

    @classmethod
    def check(cls, params, protocol, batch_size):
        super().check(params, protocol, batch_size)
        if protocol.name != "fedsgd":
            raise ConfigError("defense diff2 is DIFF2-GD: it needs protocol fedsgd (full local batch)")
        rounds, period = params["rounds"], params["period"]
        checks.require("defense diff2", "rounds", rounds, rounds < period, f"< period ({period})")
        checks.require("defense diff2", "rounds", rounds, params["view"] != "difference" or rounds >= 1,
                       ">= 1 with view difference")

    def __init__(self, protocol, *, clip1: float = 1.0, clip2: float = 1.0, noise1: float = 1.0, noise2: float = 1.0,
                 period: int = 10, rounds: int = 1, step: float = 0.01, view: str = "telescoped",
                 total_rounds: int = 100, delta: float = 1e-5, seed: int = 0, adjacency: str = "add-remove"):
        super().__init__(protocol)
        self.adjacency = adjacency
        self.clip1, self.clip2, self.noise1, self.noise2 = clip1, clip2, noise1, noise2
        self.period, self.rounds, self.view, self.total_rounds, self.delta = period, rounds, view, total_rounds, delta
        self.iterates = self._iterates(step, seed)
        self.public = {"iterates": self.iterates, "view": view}

    def follow(self, previous: Update | None, current: Update) -> DIFF2:
        """The node on given public iterates (the federation's): a restart at ``current`` when ``previous`` is None,
        else the difference between ``previous`` and ``current``."""
        self.iterates = [current] if previous is None else [previous, current]
        self.view = "telescoped" if previous is None else "difference"
        self.public = {"iterates": self.iterates, "view": self.view}
        return self

    def _iterates(self, step: float, seed: int) -> list[Update]:
        """x_{r-rounds}, ..., x_r: the public iterates since the last restart, oldest first."""
        gen = torch.Generator().manual_seed(seed)
        current = dict(self.protocol.params)
        scale = step * float(torch.sqrt(sum(v.pow(2).sum() for v in current.values())))
        out = [current]
        for _ in range(self.rounds):
            direction = {k: torch.randn(v.shape, generator=gen).to(v) for k, v in current.items()}
            norm = torch.sqrt(sum(v.pow(2).sum() for v in direction.values()))
            current = {k: current[k] + scale * direction[k] / norm for k in current}
            out.append(current)
        return out[::-1]

    def _message(self, x, y, generator) -> Update:
        p, its = self.protocol, self.iterates
        if self.view == "difference":
            return difference_message(p, its[-1], its[-2], x, y, self.clip2, self.noise2, generator)
        total = restart_message(p, its[0], x, y, self.clip1, self.noise1, generator)
        for old, new in zip(its[:-1], its[1:], strict=True):
            d = difference_message(p, new, old, x, y, self.clip2, self.noise2, generator)
            total = {k: total[k] + d[k] for k in total}
        return total

    def account(self, x):
        """The message's releases: the last difference (view difference), or the restart and every difference
        since (telescoped)."""
        differences = len(self.iterates) - 1
        if self.view == "difference":
            self.releases.append((self.noise2, 1.0, 1))
            return
        self.releases.append((self.noise1, 1.0, 1))
        if differences:
            self.releases.append((self.noise2, 1.0, differences))

    def share(self, x, y, generator):
        self.account(x)
        return {k: v.detach() for k, v in self._message(x.detach(), y, generator).items()}

    def simulate(self, x, y):
        return self._message(x, y, None)

    def cost(self):
        return {"epsilon": epsilon(self.noise1, self.noise2, self.period, self.total_rounds, self.delta,
                                   self.adjacency),
                "delta": self.delta, "adjacency": self.adjacency,
                "bytes": self.value_bytes() * self.numel()}  # per round: one vector
