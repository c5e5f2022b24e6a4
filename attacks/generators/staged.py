"""The generator interface the generative attacks search: a sequence of stages G = G_N o ... o G_0.

Stage 0 maps the latent z (and, for a class-conditional generator, the condition c(y, z)) to the first feature map;
the last stage ends in pixels in [0, 1]. ``features(z, k)`` is the input of stage k (k = 0: z itself) and
``decode(h, k)`` runs stages k..N from it, so GIFD can optimize any intermediate feature and the latent-space attacks
use k = 0.
"""

from __future__ import annotations

import torch
from torch import nn


class StagedGenerator(nn.Module):
    """Subclasses build ``self.stages`` (an ``nn.ModuleList``) and set ``latent_dim`` and ``shape`` (C, H, W)."""

    latent_dim: int
    shape: tuple[int, int, int]
    stages: nn.ModuleList

    def condition(self, labels: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor | None:
        """The per-sample condition every stage receives, from the labels and the latent (``None`` for an
        unconditional generator). Attacks that optimize a feature past stage 0 keep it fixed at the found latent."""
        return None

    def run_stage(self, k: int, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.stages[k](h)

    def decode(self, h: torch.Tensor, k: int = 0, cond: torch.Tensor | None = None) -> torch.Tensor:
        """G_N o ... o G_k (h): images in [0, 1]."""
        for i in range(k, len(self.stages)):
            h = self.run_stage(i, h, cond)
        return h

    def features(self, z: torch.Tensor, k: int, cond: torch.Tensor | None = None) -> torch.Tensor:
        """G_{k-1} o ... o G_0 (z): the input of stage k."""
        for i in range(k):
            z = self.run_stage(i, z, cond)
        return z

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(z, 0, self.condition(labels, z))

    def sample_latent(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(batch, self.latent_dim, generator=generator)
