"""Analytic attacks: closed-form inversion of the message, no optimization.

``fc-invert`` (Phong et al., IEEE TIFS 2018; the building block of every analytic attack): for a linear layer
y = W x + b and per-sample output gradients delta_k,
    dL/dW_i = (1/B) sum_k delta_{k,i} x_k^T,   dL/db_i = (1/B) sum_k delta_{k,i},
so a row i to which only sample k contributes gives x_k = (dL/dW_i) / (dL/db_i) exactly, for any batch size. Rows
mixing several samples give delta-weighted averages. We divide every row with |dL/db_i| above a tolerance, group the
candidates that agree to within ``tol`` (an exact input recurs in every row that it alone activates) and return the B
largest groups, each averaged.
"""

from __future__ import annotations

import torch
from giabench.attacks import labels as label_methods
from giabench.attacks.base import Attack, Reconstruction
from torch import nn

from giabench.errors import ConfigError
from giabench.registry import attack


def first_linear(model: nn.Module) -> str:
    """Name of the first parametrized module when it is an ``nn.Linear`` (fed the flattened, normalized input)."""
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            if isinstance(module, nn.Linear):
                return name
            break
    raise ConfigError("attack fc-invert needs a model whose first layer is fully connected (e.g. mlp)")


def group_candidates(candidates: torch.Tensor, weights: torch.Tensor, count: int, tol: float) -> torch.Tensor:
    """The ``count`` largest groups of near-identical rows (max abs difference <= tol), heaviest row first."""
    remaining = torch.argsort(weights, descending=True)
    groups = []
    while remaining.numel():
        head = candidates[remaining[0]]
        close = (candidates[remaining] - head).abs().amax(dim=1) <= tol
        members = remaining[close]
        groups.append((members.numel(), float(weights[members].sum()), candidates[members].mean(dim=0)))
        remaining = remaining[~close]
    groups.sort(key=lambda g: (g[0], g[1]), reverse=True)
    return torch.stack([g[2] for g in groups[:count]])


@attack("fc-invert")
class FCInvert(Attack):
    """Exact inversion of a first fully connected layer: x = (dL/dW_i) / (dL/db_i) (Phong et al. 2018, Sec. 3)."""

    family = "analytic"
    assumes = "the first layer is fully connected with a bias; labels inferred (iDLG rule) for the label score"

    def __init__(self, *, tol: float = 1e-3, labels: str = "inferred"):
        if tol <= 0:
            raise ConfigError("attack fc-invert: tol > 0")
        if labels != "known" and not labels.startswith("inferred"):
            raise ConfigError(f"attack fc-invert: labels must be known or inferred[:METHOD], got {labels!r}")
        self.tol, self.labels = tol, labels

    def reconstruct(self, view, simulate, generator, progress=None):
        layer = first_linear(view.model)
        weight = view.message[f"{layer}.weight"].detach().double().cpu()
        bias = view.message[f"{layer}.bias"].detach().double().cpu()
        scale = bias.abs().max()
        active = bias.abs() > 1e-6 * scale if scale > 0 else torch.zeros_like(bias, dtype=torch.bool)
        if not active.any():
            raise ConfigError("attack fc-invert: the first layer's bias gradient is zero")
        candidates = weight[active] / bias[active, None]
        normalized = group_candidates(candidates, bias[active].abs(), view.batch_size, self.tol)
        mean, std = view.model.mean.cpu().double(), view.model.std.cpu().double()
        images = (normalized.view(-1, *view.shape) * std + mean).float().clamp(0, 1)
        if images.shape[0] < view.batch_size:  # fewer distinct inputs than samples: repeat the strongest
            images = images[torch.arange(view.batch_size) % images.shape[0]]
        y = view.labels if self.labels == "known" else label_methods.infer(self.labels, view, simulate)
        if progress:
            progress(1)
        return Reconstruction(images, y, 1, extra={"rows": int(active.sum())})


@attack("infer-labels")
class InferLabels(Attack):
    """Label inference only (no images): the label track. ``method`` is one of ``giabench.attacks.labels``."""

    family = "label"
    assumes = "non-negative penultimate features and cross-entropy; llg+ also surrogate data"

    def __init__(self, *, method: str = "llg"):
        self.labels = f"inferred:{method}"
        label_methods.parse(self.labels)
        self.method = method

    def reconstruct(self, view, simulate, generator, progress=None):
        y = label_methods.infer(self.labels, view, simulate)
        if progress:
            progress(1)
        return Reconstruction(None, y, 1)
