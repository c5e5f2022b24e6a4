"""``hyperfl-invert``: the adaptive attack on HyperFL (Guo et al., AAAI 2025) that reads the generated weights and their
gradient off the hypernetwork update, then inverts the generated feature extractor (our derivation,
``shared/specs/defenses.md`` Sec. 3.2; the paper evaluates only attacks that ignore this structure).

Every generated tensor is affine in the hidden code, theta_k = A_k h + c_k, so one local gradient step gives
    dL/dc_k = g_k (the gradient of theta_k),    dL/dA_k = g_k h^T (rank one).
Stacking all outputs, the hidden code is the least-squares ratio
    h = sum_k dA_k^T dc_k / sum_k ||dc_k||^2,
exact for FedSGD; for FedAvg (Phi_0 - Phi_K over several steps) it is a gradient-weighted mean of the step codes and
the rank-one residual ||dA - dc h^T|| / ||dA|| is reported. With Phi public, theta = A h + c is the client's private
feature extractor and dc its gradient (up to the step size).
The head stays unknown, and with it the labels. Both enter the extractor's gradient only through the error signal at
the output a_j of the top generated layer (the module owning the last generated tensor), D_j = dL/da_j, so the attack
optimizes images x and signals D together:
    min_{x in [0,1]^n, D}  1 - cos( d/dtheta (1/B) sum_j <a_j(x_j; theta), D_j>,  dc ) + alpha_TV TV(x),
with Inverting Gradients' optimizer (signed Adam in normalized pixel space, step decays at 3/8, 5/8, 7/8). When the
top layer has a bias its gradient is mean_j D_j, so every D_j starts there (exact for one image). The identity holds
for networks whose generated part reaches the head only through that layer (chains such as the MLP, cifarcnn,
ConvNet); across a residual connection it is an approximation.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call

from giabench.attacks.optimization import (
    RESTARTS,
    SIGNED_ADAM_LR,
    STEP_RANGE,
    TV,
    TV_RANGE,
    cosine_distance,
    initial_images,
    signed_adam,
    total_variation,
)
from giabench.checks import Param
from giabench.contracts import Attack, Reconstruction
from giabench.errors import NotApplicable
from giabench.registry import attack


def recover_code(message: dict, shapes: dict) -> tuple[torch.Tensor, float]:
    """The hidden code h from the output layers' updates, and the relative rank-one residual."""
    num, den = 0, 0
    for name in shapes:
        d_a, d_c = message[f"out.{name}.weight"].double(), message[f"out.{name}.bias"].double()
        num = num + d_a.T @ d_c
        den = den + d_c.pow(2).sum()
    if den == 0:
        raise NotApplicable("hyperfl-invert: the generated tensors' gradient is zero (nothing to invert)")
    h = num / den
    residual = sum((message[f"out.{n}.weight"].double() - torch.outer(message[f"out.{n}.bias"].double(), h))
                   .pow(2).sum() for n in shapes)
    total = sum(message[f"out.{n}.weight"].double().pow(2).sum() for n in shapes)
    return h.float(), math.sqrt(float(residual / total))


def recover_weights(message: dict, public: dict) -> tuple[dict, dict, dict]:
    """``(theta, gradient of theta up to scale, report)`` from a HyperFL message and the public hypernetwork."""
    phi, shapes = public["hypernetwork"], public["generated"]
    h, residual = recover_code(message, shapes)
    theta = {n: (phi[f"out.{n}.weight"] @ h + phi[f"out.{n}.bias"]).view(s) for n, s in shapes.items()}
    grad = {n: message[f"out.{n}.bias"].view(s) for n, s in shapes.items()}
    return theta, grad, {"rank_one_residual": residual, "code_norm": float(h.norm())}


def last_generated(shapes: dict) -> str:
    """The module that owns the last generated tensor (its output feeds the head through parameter-free layers)."""
    return list(shapes)[-1].rsplit(".", 1)[0]


def initial_signal(observed: dict, top: str, batch: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """D_j = dL/db of the top generated layer (its mean over the batch, exact for one image), else N(0, 1)."""
    bias = observed.get(f"{top}.bias")
    if bias is not None and bias.numel() == width:
        return bias.detach().cpu().flatten().repeat(batch, 1)
    return torch.randn(batch, width, generator=generator)


@attack("hyperfl-invert")
class HyperFLInvert(Attack):
    """Recover the private generated extractor from the hypernetwork update, then invert it with the head's error
    signal as a free variable (no labels needed)."""

    title = "HyperFL inversion"
    needs = ("priors",)
    assumes = "the HyperFL mechanism and its public hypernetwork; image priors; no labels, no head"
    parameters = {
        "iterations": Param("signed-Adam steps per restart, optimizing the images x and error signals D together",
                            at_least=1),
        "lr": SIGNED_ADAM_LR,
        "tv": TV,
        "restarts": RESTARTS,
    }

    @classmethod
    def for_audit(cls, level, shape):
        raise NotApplicable("not in the battery: it reads HyperFL's hypernetwork update, so it runs against defense "
                            "hyperfl only (a suite with that defense)")

    @classmethod
    def search_space(cls, shape):
        return {"lr": STEP_RANGE, "tv": TV_RANGE}

    def __init__(self, *, iterations: int = 1000, lr: float = 0.1, tv: float = 1e-4, restarts: int = 1):
        self.iterations, self.lr, self.tv, self.restarts = iterations, lr, tv, restarts

    def reconstruct(self, view, simulate, generator, progress=None):
        if "hypernetwork" not in view.public:
            raise NotApplicable("hyperfl-invert: the message is not a HyperFL hypernetwork update")
        model, device = view.model, view.model.mean.device
        message = {k: v.to(device) for k, v in view.message.items()}
        theta, observed, report = recover_weights(message, view.public)
        head = view.public["head"]
        fixed = {n: p for n, p in view.protocol.params.items() if n in head}
        top = last_generated(view.public["generated"])
        captured: list[torch.Tensor] = []
        hook = model.get_submodule(top).register_forward_hook(lambda m, inputs, out: captured.append(out))
        leaves = {k: v.detach().requires_grad_(True) for k, v in theta.items()}

        def features(x):
            captured.clear()
            functional_call(model, ({**leaves, **fixed}, view.protocol.call_buffers()), (x,))
            return captured[0].flatten(1)

        def objective(z, signal):
            x = mean + std * z
            inner = (features(x) * signal).sum() / x.shape[0]
            grads = torch.autograd.grad(inner, list(leaves.values()), create_graph=True)
            return cosine_distance(dict(zip(leaves, grads, strict=True)), observed) + self.tv * total_variation(z)

        mean, std = model.mean, model.std
        low, high = (0 - mean) / std, (1 - mean) / std
        best, trace = (math.inf, None), []
        try:
            with torch.no_grad():
                width = features(initial_images(view, generator)).shape[1]
            for _ in range(self.restarts):
                z = ((initial_images(view, generator) - mean) / std).requires_grad_(True)
                signal = initial_signal(observed, top, view.batch_size, width, generator).to(device)
                signal.requires_grad_(True)
                signed_adam([z, signal], lambda z=z, s=signal: objective(z, s), self.iterations, self.lr,
                            lambda z=z: z.copy_(torch.maximum(torch.minimum(z, high), low)), trace, progress)
                final = float(objective(z, signal).detach())
                if final < best[0]:
                    best = (final, (mean + std * z).detach().clone())
        finally:
            hook.remove()
        return Reconstruction(best[1].cpu(), None, self.iterations * self.restarts, trace,
                              {"objective": best[0], **report})
