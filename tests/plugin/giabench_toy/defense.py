"""``toy-momentum``: clients add Gaussian noise of std ``sigma`` to their update; the server keeps a momentum buffer
across rounds (FedAvgM: v_t = beta v_{t-1} + mean_k u_k, w_t = w_{t-1} - step v_t), its own server-side state.
``TOY_SIGMA_SCALE`` in the environment scales sigma, so a test can make the defense leak more (a mutation).

``toy-dp``: a plugin's DP mechanism: the update clipped to norm C, plus N(0, (2 z C)^2 I) through giabench's
Gaussian release (one record added or removed moves the clipped update by up to 2 C), one release per message.
``TOY_DP_NOISE_SCALE`` scales the noise actually drawn while the accountant keeps counting z (a mutation the privacy
audit must catch)."""

from __future__ import annotations

import os

from giabench.checks import Param
from giabench.contracts import Client
from giabench.defenses.mechanisms import clip_update
from giabench.federation import Federation, load_parameters, mean_update
from giabench.privacy import ADJACENCY, dp_cost, gaussian_release
from giabench.registry import defense


class MomentumFederation(Federation):
    """The server averages the clients' updates into a momentum buffer carried between rounds."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.velocity = None

    def aggregate(self, index, messages):
        current = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        mean = mean_update(messages, current)
        beta = self.params["momentum"]
        self.velocity = mean if self.velocity is None else {k: beta * self.velocity[k] + mean[k] for k in mean}
        load_parameters(self.model, {k: current[k] - self.step * self.velocity[k] for k in current})


@defense("toy-momentum")
class ToyMomentum(Client):
    """Noisy updates and server momentum (a plugin's defense with server-side state)."""

    federation = MomentumFederation
    parameters = {"sigma": Param("std of the Gaussian noise on every entry of the update", at_least=0),
                  "momentum": Param("beta, the server's momentum", at_least=0, below=1)}

    def __init__(self, protocol, *, sigma: float = 0.001, momentum: float = 0.9):
        super().__init__(protocol)
        self.sigma = sigma * float(os.environ.get("TOY_SIGMA_SCALE", "1"))
        self.momentum = momentum

    def transform(self, update, generator):
        if generator is None or self.sigma == 0:
            return update
        return {k: v + self.sigma * v.new_empty(v.shape).normal_(generator=generator) for k, v in update.items()}


@defense("toy-dp")
class ToyDP(Client):
    """The clipped update plus Gaussian noise (a plugin's DP defense)."""

    parameters = {"clip": Param("C, the bound on the update's L2 norm", above=0),
                  "noise_multiplier": Param("z: noise std 2 z C", above=0), "adjacency": ADJACENCY}

    def __init__(self, protocol, *, clip: float = 1.0, noise_multiplier: float = 1.0, adjacency: str = "add-remove"):
        super().__init__(protocol)
        self.clip, self.noise_multiplier, self.adjacency = clip, noise_multiplier, adjacency

    def account(self, x):
        self.releases.append((self.noise_multiplier, 1.0, 1))

    def transform(self, update, generator):
        update = clip_update(update, self.clip)
        if generator is None:
            return update
        scale = float(os.environ.get("TOY_DP_NOISE_SCALE", "1"))
        return gaussian_release(update, scale * self.noise_multiplier * 2 * self.clip, 2 * self.clip, generator)

    def cost(self):
        return {**super().cost(), **dp_cost(self.releases, 1, 1e-5, self.adjacency)}

