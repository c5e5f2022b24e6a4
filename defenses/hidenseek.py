"""HideNseek (Vallapuram, Zhou, Kwon, Lee, Xu, Hui, arXiv 2206.04385, 2022): server-side one-shot pruning at
initialization, then clients learn only a sign supermask over the kept, frozen random weights.

Server, data-free (SynFlow, Tanaka et al., NeurIPS 2020, Eq. 2): with every parameter replaced by its absolute value
and an all-ones input, R = 1^T f_|theta|(1); the saliency of a weight is S = |theta * dR/dtheta|. One scoring pass and
a global top-k over all convolution and linear weights keep a fraction ``density``: the public mask m.
Client: real scores z on the kept weights (public initial value ``score_init`` > 0, so every sign starts at +1),
    w = theta0 * m * s(z),   s(z) = sign(z) (sign(0) = +1),   ds/dz := 1 (straight-through estimator),
trained by the protocol's local steps (FedSGD: one score gradient; FedAvg: SGD on z). Biases and normalization
parameters stay frozen. What is uploaded (``upload``), our documented choice where the paper is not explicit:
- ``scores``: the score update z0 - z_K on the kept weights (4 bytes each; the mask is public). Since
  dL/dz = dL/dw * theta0 * m, this is a rescaled sparse update; the adaptive attacker matches it through ``simulate``.
- ``signs``: sign(z_K) on the kept weights (1 bit each; the server takes a majority vote). The attacker matches the
  relaxed signs tanh(z_K / ``temperature``) (a signSGD-style relaxation).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from giabench.checks import Param
from giabench.contracts import Axis, Client
from giabench.errors import ConfigError
from giabench.federation import Federation, mean_update
from giabench.protocols import FedAvg, Update
from giabench.registry import defense

UPLOADS = ("scores", "signs")


def prunable(model: nn.Module) -> list[str]:
    """Names of the convolution and linear weights (the tensors SynFlow scores and HideNseek masks)."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def synflow_scores(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """S = |theta * dR/dtheta| with R = sum f_|theta|(1), in float64 (one pass, no data)."""
    net = copy.deepcopy(model).double().eval()
    net = getattr(net, "net", net)  # score the network itself, without the input normalization
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad()
    net(torch.ones(1, *shape, dtype=torch.float64)).sum().backward()
    named = dict(net.named_parameters())
    prefix = "net." if hasattr(model, "net") else ""
    return {name: (named[name[len(prefix):]] * named[name[len(prefix):]].grad).abs().float() for name in
            prunable(model)}


def global_mask(scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """1 on the ``density`` fraction of entries with the largest score across all tensors."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = max(1, round(density * flat.numel()))
    threshold = torch.topk(flat, keep).values[-1]
    return {k: (s >= threshold).float() for k, s in scores.items()}


def signs(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


class HideNSeekFederation(Federation):
    """HideNseek's server over training rounds: the weights stay at theta0 and the server keeps the scores z; the
    clients start from z and upload score updates (the server averages them and steps) or signs (the server takes a
    majority vote, ties to +1). The SynFlow mask is computed once; clients differ only in their data."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.member = self.client_type(self.protocol(), **self.params)  # every client: the same mask and theta0
        self.scores = self.member.scores

    def client(self, k, index, protocol):
        self.member.scores = self.scores
        return self.member

    def aggregate(self, index, messages):
        mean = mean_update(messages, self.scores)
        if self.params["upload"] == "scores":
            self.scores = {k: self.scores[k] - self.step * mean[k] for k in self.scores}
        else:
            scale = self.params["score_init"]
            self.scores = {k: scale * torch.where(mean[k] >= 0, 1.0, -1.0) for k in self.scores}

    def final_models(self):
        return [{k: v.detach() for k, v in self.member.effective(self.scores).items()}]


@defense("hidenseek")
class HideNSeek(Client):
    """SynFlow mask at ``density`` on the server, sign-supermask training on the client, upload scores or signs."""

    modalities = ("image",)  # its model changes an image classifier's layers

    federation = HideNSeekFederation

    vmappable = False  # the simulated local round trains with torch.autograd inside
    shuffles = False  # its local round is its own loop, in order
    strength = Axis.of("density", 0.5, 0.2, 0.1, 0.05)
    parameters = {
        "density": Param("the fraction of convolution and linear weights the SynFlow mask keeps", above=0, at_most=1),
        "upload": Param("scores: the score update z0 - z_K on the kept weights; signs: sign(z_K), one bit each",
                        choices=UPLOADS),
        "score_init": Param("the public initial score of every kept weight (so every sign starts at +1)", above=0),
        "temperature": Param("signs: the attacker matches the relaxed signs tanh(z_K / temperature)", above=0),
    }

    def __init__(self, protocol, *, density: float = 0.1, upload: str = "scores", score_init: float = 0.01,
                 temperature: float = 0.001):
        super().__init__(protocol)
        self.density, self.upload, self.temperature = density, upload, temperature
        model = protocol.model
        shape = _input_shape(model)
        self.mask = global_mask(synflow_scores(model, shape), density)
        self.scores = {k: torch.full_like(m, score_init) for k, m in self.mask.items()}
        self.public = {"mask": self.mask, "scores": self.scores, "upload": upload}

    def effective(self, scores: Update) -> Update:
        """The weights the client's network uses: theta0 * m * s(z) with the straight-through gradient."""
        params = dict(self.protocol.params)
        for k, z in scores.items():
            ste = z + (signs(z) - z).detach()
            params[k] = params[k] * self.mask[k] * ste
        return params

    def _train(self, x: torch.Tensor, y: torch.Tensor) -> Update:
        """The scores z_K after the protocol's local steps (differentiable in x when x requires grad)."""
        p = self.protocol
        z = {k: v.clone().requires_grad_(True) for k, v in self.scores.items()}
        if isinstance(p, FedAvg):
            batches, epochs, lr = p._batches(x.shape[0]), p.epochs, p.lr
        else:
            batches, epochs, lr = [slice(0, x.shape[0])], 1, 1.0
        create = x.requires_grad
        for _ in range(epochs):
            for part in batches:
                loss = p.loss(self.effective(z), x[part], y[part])
                grads = torch.autograd.grad(loss, list(z.values()), create_graph=create)
                z = {k: z[k] - lr * g * self.mask[k] for k, g in zip(z, grads, strict=True)}
        return z

    def _message(self, x, y) -> Update:
        z = self._train(x, y)
        if self.upload == "scores":
            return {k: (self.scores[k] - z[k]) * self.mask[k] for k in z}
        return {k: signs(z[k]) * self.mask[k] for k in z}

    def share(self, x, y, generator):
        return {k: v.detach() for k, v in self._message(x.detach(), y).items()}

    def simulate(self, x, y):
        if self.upload == "scores":
            out = self._message(x, y)
        else:
            z = self._train(x, y)
            out = {k: torch.tanh(z[k] / self.temperature) * self.mask[k] for k in z}
        return out if x.requires_grad else {k: v.detach() for k, v in out.items()}

    def cost(self):
        kept = sum(int(m.sum()) for m in self.mask.values())
        sent = self.value_bytes() * kept if self.upload == "scores" else math.ceil(kept / 8)
        return {**super().cost(), "bytes": sent}


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    """C x H x W the classifier expects, recorded by ``giabench.models.build``."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError("defense hidenseek needs a model from the zoo (it records its input shape)")
    return tuple(shape)
