"""The pieces defenses are built of: clipping a whole update or each sample's gradient, and the top-k mask of a
tensor (their Gaussian noise is ``giabench.privacy.gaussian_release``)."""

from __future__ import annotations

import torch

from giabench.protocols import Update


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


def top_k_mask(tensor: torch.Tensor, k: int) -> torch.Tensor:
    """1 at the ``k`` entries of ``tensor`` of largest magnitude, 0 elsewhere (not differentiated)."""
    flat = tensor.detach().abs().flatten()
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat, k).indices] = 1.0
    return mask.view_as(tensor)
