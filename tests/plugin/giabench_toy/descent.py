"""``toy-descent``: Adam on the dummy image against the squared distance of the gradients, labels known (a plugin's
optimization attack, with a search space ``giabench tune`` searches like a built-in one's)."""

from __future__ import annotations

import torch

from giabench.checks import Param
from giabench.contracts import Attack, Reconstruction
from giabench.registry import attack
from giabench.search import Range


@attack("toy-descent")
class ToyDescent(Attack):
    """argmin_x sum_l ||g_l(x, y) - g_l||^2 by Adam from uniform noise, pixels clamped to [0, 1]."""

    needs = ("labels",)
    title = "toy descent"
    assumes = "labels known"
    parameters = {"iterations": Param("Adam steps", at_least=1), "lr": Param("Adam step size", above=0)}

    def __init__(self, *, iterations: int = 30, lr: float = 0.001):
        self.iterations, self.lr = iterations, lr

    @classmethod
    def search_space(cls, shape):
        return {"lr": Range(1e-3, 1.0, log=True)}

    def reconstruct(self, view, simulate, generator, progress=None):
        x = torch.rand((view.batch_size, *view.shape), generator=generator).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=self.lr)
        for _ in range(self.iterations):
            optimizer.zero_grad()
            simulated = simulate(x, view.labels)
            sum(((simulated[k] - v) ** 2).sum() for k, v in view.message.items()).backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        return Reconstruction(x.detach(), view.labels, self.iterations)
