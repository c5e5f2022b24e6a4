"""Cocktail Party Attack (Kariyappa, Guo, Mahajan, Ho, Suh, Nguyen, Evans; ICML 2023, "Cocktail Party Attack: Breaking
Aggregation-Based Privacy in Federated Learning using Independent Component Analysis").

The weight gradient of a fully connected layer with inputs x_k (images, or embeddings of a convolutional trunk) is
a linear mixture of them, one mixture per output unit:
    G = dL/dW = D X^T,   row i:  g_i = sum_k D_ik x_k^T                                         (mixing)
so recovering X is blind source separation with B sources, m mixtures (m >= B) and n samples per source (pixels or
features). Following the paper: centre the mixtures, whiten them by the top-B SVD, Z = sqrt(n) Sigma^-1 U^T G_c, and
find the unmixing W (rows w_k unit norm) that maximises non-Gaussianity with two priors,
    max_W  (1/B) sum_k [J(w_k^T Z) - lambda_tv TV(w_k^T Z)] - lambda_mi (1/B) sum_{j != k} exp(T (|w_j . w_k| - 1))
with the negentropy J(y) = (E log cosh y - E log cosh v)^2, v ~ N(0, 1) (Hyvarinen 1999), TV only when the sources are
images, and the mutual-independence term keeping two rows from finding the same source (images correlate, so the
rows are not forced orthogonal). The paper weighs exp(T |cos|) by 1/B^2; we shift it by e^-T and weigh it by 1/B, so
that a duplicated row costs what its negentropy gains at any B (at 1/B^2 rows collapsed onto a few sources at B=64).
ICA leaves each source's sign and scale open; the layer's bias gradient fixes both exactly (our addition, as SPEAR
does): with M the unmixing of the raw mixtures, M D = diag(a), so D = M^+ diag(a) and dL/db = D 1 = M^+ a (least
squares for a), and X^T = diag(a)^-1 M G.
When the layer is not the first, the sources are embeddings; each image is then found by feature inversion,
    min_x  1 - cos(f(x), e_k) + lambda_fi TV(x)                                     (feature inversion)
with f the network up to the layer. Secure aggregation of K clients leaves G a mixture of all K B inputs: the sum is
attacked as one batch of K B, as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from giabench.attacks import labels as label_methods
from giabench.attacks.analytic import first_layer, layer_gradients
from giabench.attacks.base import LABELS, Attack
from giabench.attacks.optimization import total_variation
from giabench.checks import Param
from giabench.contracts import Reconstruction
from giabench.errors import NotApplicable
from giabench.registry import attack

GAUSSIAN_LOGCOSH = 0.374567  # E log cosh v for v ~ N(0, 1)


def target_layer(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    """The named linear layer, or the model's first ``nn.Linear`` when ``name`` is empty."""
    for candidate, module in model.named_modules():
        if isinstance(module, nn.Linear) and (candidate == name or not name):
            return candidate, module
    raise NotApplicable(f"cpa needs a fully connected layer{f' named {name}' if name else ''}; the model has none")


def layer_inputs(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs of ``layer`` (flattened) when the model runs on ``x``, with gradients."""
    seen = []
    handle = layer.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0].flatten(1)


def negentropy(y: torch.Tensor) -> torch.Tensor:
    """J(y) = (E log cosh y - E log cosh v)^2 per row of unit-variance signals y."""
    return (torch.log(torch.cosh(y)).mean(dim=1) - GAUSSIAN_LOGCOSH) ** 2


class Whitened:
    """The centred mixtures G_c = U Sigma V^T cut to rank r: Z = sqrt(n) V_r^T (zero mean, unit variance rows)."""

    def __init__(self, mixtures: torch.Tensor, rank: int):
        self.mixtures = mixtures
        centred = mixtures - mixtures.mean(dim=1, keepdim=True)
        u, s, vh = torch.linalg.svd(centred, full_matrices=False)
        self.rank = rank
        self.samples = mixtures.shape[1]
        self.signals = vh[:rank] * math.sqrt(self.samples)
        self.to_signals = u[:, :rank].T / s[:rank, None] * math.sqrt(self.samples)  # Z = to_signals G_c

    def sources(self, unmixing: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
        """X^T (r x n) from the unit-row unmixing W: M = W Sigma^-1 U^T sqrt(n), a = lstsq(M^+, dL/db),
        X^T = diag(a)^-1 M G."""
        m = unmixing @ self.to_signals
        scales = torch.linalg.lstsq(torch.linalg.pinv(m), bias_grad[:, None]).solution.squeeze(1)
        return (m @ self.mixtures) / scales[:, None]


@attack("cpa")
class CocktailParty(Attack):
    """Cocktail Party Attack (Kariyappa et al., ICML 2023): whitening + ICA of the FC layer's weight gradient
    (negentropy, TV and mutual-independence priors), scales from dL/db = M^+ a, feature inversion past a trunk."""

    family = "analytic"
    closed_form = False  # ICA by Adam: non-convex, judged over seeds like the optimization attacks
    title = "Cocktail Party Attack"
    assumes = ("a fully connected layer with a bias and at least B units (the first layer, or a head whose inputs "
               "are inverted to images); labels inferred (LLG) for the label score")
    parameters = {
        "layer": Param("the fully connected layer whose weight gradient is unmixed (empty: the model's first)"),
        "iterations": Param("Adam steps of the ICA unmixing W", at_least=1),
        "lr": Param("Adam step size of the unmixing W", above=0),
        "tv": Param("lambda_tv, the weight of the sources' total variation (when they are images)", at_least=0),
        "mi": Param("lambda_mi, the weight of the mutual-independence term keeping rows on distinct sources",
                    at_least=0),
        "temperature": Param("T, the sharpness of the mutual-independence term exp(T (|w_j . w_k| - 1))", above=0),
        "fi_iterations": Param("Adam steps of feature inversion (only when the layer is not the first)", at_least=1),
        "fi_lr": Param("Adam step size of feature inversion, in the model's normalized pixel space", above=0),
        "fi_tv": Param("lambda_fi, the weight of the total-variation prior in feature inversion", at_least=0),
        "labels": LABELS,
    }

    @classmethod
    def for_audit(cls, level, shape):
        iterations = {"quick": 500, "standard": 2000, "thorough": 5000}[level]
        return {"iterations": iterations, "fi_iterations": iterations}

    def applies(self, model, shape, protocol, batch_size):
        try:
            _, layer = target_layer(model, self.layer)
        except NotApplicable as exc:
            return str(exc).removeprefix("cpa needs ")
        if layer.bias is None:
            return "the fully connected layer has no bias (the scales come from its bias gradient)"
        if layer.out_features < batch_size:
            return (f"the fully connected layer has {layer.out_features} units, fewer mixtures than the batch of "
                    f"{batch_size}")
        return None

    def __init__(self, *, layer: str = "", iterations: int = 2000, lr: float = 0.01, tv: float = 0.1,
                 mi: float = 0.03, temperature: float = 10.0, fi_iterations: int = 2000, fi_lr: float = 0.05,
                 fi_tv: float = 1e-3, labels: str = "inferred:llg"):
        self.layer, self.iterations, self.lr, self.tv, self.mi, self.temperature = layer, iterations, lr, tv, mi, \
            temperature
        self.fi_iterations, self.fi_lr, self.fi_tv, self.labels = fi_iterations, fi_lr, fi_tv, labels

    def planned_budget(self):
        return self.iterations

    def unmix(self, white: Whitened, image_shape: tuple[int, ...] | None, generator: torch.Generator,
              progress=None) -> torch.Tensor:
        """The unit-row unmixing W maximising the objective above by Adam from a random orthogonal start."""
        r = white.rank
        start, _ = torch.linalg.qr(torch.randn(r, r, generator=generator, dtype=torch.float64))
        unmixing = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([unmixing], lr=self.lr)
        off_diagonal = ~torch.eye(r, dtype=torch.bool)
        for step in range(self.iterations):
            rows = unmixing / unmixing.norm(dim=1, keepdim=True)
            y = rows @ white.signals
            loss = -negentropy(y).mean()
            if self.tv and image_shape is not None:
                loss = loss + self.tv * total_variation(y.view(r, *image_shape))
            if self.mi and r > 1:
                cosines = (rows @ rows.T).abs()[off_diagonal]
                loss = loss + self.mi * torch.exp(self.temperature * (cosines - 1)).sum() / r
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if progress and (step + 1) % 100 == 0:
                progress(100)
        return (unmixing / unmixing.norm(dim=1, keepdim=True)).detach()

    def embeddings(self, view, generator, progress=None) -> tuple[torch.Tensor, nn.Linear, dict]:
        """The recovered inputs of the layer (B x n, the model's normalized space when it is the first layer)."""
        name, layer = target_layer(view.model, self.layer)
        if layer.bias is None:
            raise NotApplicable("cpa: the fully connected layer has no bias (the scales come from its bias gradient)")
        weight_grad, bias_grad = layer_gradients(view.message, name, "cpa")
        live = weight_grad.abs().amax(dim=1) > 0
        if int(live.sum()) < view.batch_size:
            raise NotApplicable(f"cpa: {int(live.sum())} live units of {name}, fewer mixtures than the batch of "
                                f"{view.batch_size}")
        white = Whitened(weight_grad[live], view.batch_size)
        first = first_layer(view.model)[1] is layer  # its inputs are then the flattened, normalized images
        unmixing = self.unmix(white, view.shape if first else None, generator, progress)
        sources = white.sources(unmixing, bias_grad[live])
        return sources, layer, {"layer": name, "mixtures": int(live.sum()), "first_layer": first}

    def invert_features(self, view, layer: nn.Linear, targets: torch.Tensor, generator: torch.Generator,
                        progress=None) -> torch.Tensor:
        """Images x_k with f(x_k) close to e_k in cosine, a TV prior on the pixels (Adam from noise)."""
        model = view.model
        device = model.mean.device
        x = torch.randn((targets.shape[0], *view.shape), generator=generator).to(device).requires_grad_(True)
        goal = targets.float().to(device)
        optimizer = torch.optim.Adam([x], lr=self.fi_lr)
        for step in range(self.fi_iterations):
            pixels = model.mean + model.std * x  # optimized in the model's normalized space
            features = layer_inputs(model, layer, pixels)
            loss = (1 - nn.functional.cosine_similarity(features, goal, dim=1)).sum()
            loss = loss + self.fi_tv * total_variation(pixels) * targets.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if progress and (step + 1) % 100 == 0:
                progress(100)
        return (model.mean + model.std * x).detach().cpu().clamp(0, 1)

    def reconstruct(self, view, simulate, generator, progress=None):
        sources, layer, extra = self.embeddings(view, generator, progress)
        if extra["first_layer"]:
            mean, std = view.model.mean.cpu().double(), view.model.std.cpu().double()
            images = (sources.view(-1, *view.shape) * std + mean).float().clamp(0, 1)
            spent = self.iterations
        else:
            images = self.invert_features(view, layer, sources, generator, progress)
            spent = self.iterations + self.fi_iterations
        y = label_methods.resolve(self.labels, view, simulate)
        return Reconstruction(images, y, spent, extra=extra)
