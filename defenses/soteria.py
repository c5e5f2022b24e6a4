"""Soteria (Sun, Li, Wang, Wen, Chen, Li, "Soteria: Provable Defense against Privacy Leakage in Federated Learning
from Representation Perspective", CVPR 2021, Sec. 4.2): perturb the representation r (the input of the defended fully
connected layer, here the model's last linear layer) where it reveals the most about the input, by pruning the
columns of that layer's weight gradient. With the reference code's score (the GS experiments),
    score_f = sum_b || d r_{b,f} / d x_b ||_2 / (r_{b,f} + 0.1),
the units below the ``fraction`` quantile of the scores (linear interpolation, numpy's percentile) get mask 0, the rest
1, and the client shares the whole update with  dL/dW_fc <- dL/dW_fc diag(mask).  Every other tensor is unchanged.
The zeroed columns are visible in the message, so the mask is public: the adaptive attacker matches
mask * u(x_hat) for the defended weight and u(x_hat) elsewhere (it keeps every undefended layer, the observation of
Balunovic et al., ICLR 2022, that breaks Soteria). No DP guarantee: epsilon is infinite.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, vjp, vmap

from giabench.checks import Param
from giabench.contracts import Axis, Client
from giabench.registry import defense

JACOBIAN_CHUNK = 64  # representation units whose input gradients are computed in one vmapped pass


def representation_scores(protocol, x: torch.Tensor, layer: str) -> torch.Tensor:
    """score_f for every unit f of the input of ``layer`` (a module name), at the broadcast weights. The input
    gradients of unit f summed over the batch, d (sum_b r_{b,f}) / d x, are those of each sample where the samples
    are independent (the reference code's loop computes the same)."""
    module = protocol.model.get_submodule(layer)

    def rep(images: torch.Tensor) -> torch.Tensor:
        captured = []
        handle = module.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            functional_call(protocol.model, (protocol.params, protocol.call_buffers()), (images,))
        finally:
            handle.remove()
        return captured[0].flatten(1)

    r, pullback = vjp(rep, x.detach())
    units = r.shape[1]
    cotangents = torch.eye(units, dtype=r.dtype, device=r.device)[:, None, :].expand(units, *r.shape)
    (jacobian,) = vmap(pullback, chunk_size=JACOBIAN_CHUNK)(cotangents)  # (F, B, *x.shape[1:])
    norms = torch.linalg.vector_norm(jacobian.flatten(2), dim=2)  # (F, B)
    return (norms / (r.detach().T + 0.1)).sum(dim=1)


@defense("soteria")
class Soteria(Client):
    """Prunes the ``fraction`` of the last linear layer's input units whose representation reveals the most (lowest
    ||dr/dx|| / r scores are pruned, as in the reference code): those columns of its weight gradient are zeroed."""

    modalities = ("image",)  # its scores differentiate the representation with respect to the input pixels

    strength = Axis.of("fraction", 0.2, 0.5, 0.8, 0.95)
    parameters = {"fraction": Param("the share of the defended layer's input units pruned (their weight-gradient "
                                    "columns zeroed)", at_least=0, below=1)}

    def __init__(self, protocol, *, fraction: float = 0.8):
        super().__init__(protocol)
        self.fraction = fraction

    @property
    def layer(self) -> str:
        """The defended layer: the model's last linear layer (the classifier)."""
        return self.protocol.model.classifier_weight.removesuffix(".weight")

    def share(self, x, y, generator):
        scores = representation_scores(self.protocol, x, self.layer)
        threshold = torch.quantile(scores, self.fraction)
        self.public["mask"] = (scores.abs() >= threshold).to(scores.dtype)
        return super().share(x, y, generator)

    def transform(self, update, generator):
        mask = self.public.get("mask")
        if mask is None:
            raise RuntimeError("soteria: simulate() needs the mask of a shared message; call share() first")
        weight = self.protocol.model.classifier_weight
        return {k: v * mask if k == weight else v for k, v in update.items()}
