"""Analytic attacks: closed-form inversion of the message, no optimization.

``fc-invert`` (Phong et al., IEEE TIFS 2018; the building block of every analytic attack): for a linear layer
y = W x + b and per-sample output gradients delta_k,
    dL/dW_i = (1/B) sum_k delta_{k,i} x_k^T,   dL/db_i = (1/B) sum_k delta_{k,i},
so a row i to which only sample k contributes gives x_k = (dL/dW_i) / (dL/db_i) exactly, for any batch size. Rows
mixing several samples give delta-weighted averages. We divide every row with |dL/db_i| above a tolerance, group the
candidates that agree to within ``tol`` (an exact input recurs in every row that it alone activates) and return the B
largest groups, each averaged; when there are fewer groups than samples, the remaining slots are marked unfilled.
"""

from __future__ import annotations

import torch
from torch import nn

from giabench import checks
from giabench.attacks import labels as label_methods
from giabench.attacks.base import LABELS, Attack
from giabench.checks import Param
from giabench.contracts import UNFILLED, Reconstruction
from giabench.errors import ConfigError, NotApplicable
from giabench.registry import attack


def first_layer(model: nn.Module) -> tuple[str, nn.Module | None]:
    """The first module that holds parameters itself, with its name (``("", None)`` when there is none)."""
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            return name, module
    return "", None


def unless_linear_first(model: nn.Module) -> str | None:
    """Why ``model``'s first parametrized layer is not fully connected with a bias (None when it is)."""
    _, first = first_layer(model)
    if isinstance(first, nn.Linear) and first.bias is not None:
        return None
    what = type(first).__name__ if first is not None else "no parameterized layer"
    return f"the first layer is {what}, not fully connected with a bias"


def first_linear(model: nn.Module) -> str:
    """Name of the first parametrized module when it is an ``nn.Linear`` (fed the flattened, normalized input)."""
    name, module = first_layer(model)
    if not isinstance(module, nn.Linear):
        raise NotApplicable("fc-invert needs a model whose first layer is fully connected (e.g. mlp)")
    return name


def layer_gradients(message: dict, layer: str, attack: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias gradients of ``layer`` in float64, as the message carries them in the clear; a message
    that does not (a sketch, a hypernetwork update, a score update) is not applicable."""
    keys = (f"{layer}.weight", f"{layer}.bias")
    if not all(key in message for key in keys):
        raise NotApplicable(f"{attack} reads the weight and bias gradients of layer {layer}, which this message does "
                            "not carry in the clear")
    return tuple(message[key].detach().double().cpu() for key in keys)


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


def fill_slots(found: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` slots holding the ``found`` images first, the rest ``UNFILLED``, and the mask of filled ones."""
    images = torch.full((batch_size, *found.shape[1:]), UNFILLED)
    images[: found.shape[0]] = found
    return images, torch.arange(batch_size) < found.shape[0]


@attack("fc-invert")
class FCInvert(Attack):
    """Exact inversion of a first fully connected layer: x = (dL/dW_i) / (dL/db_i) (Phong et al. 2018, Sec. 3)."""

    family = "analytic"
    title = "linear-layer inversion"
    assumes = "the first layer is fully connected with a bias; labels inferred (iDLG rule) for the label score"
    parameters = {
        "tol": Param("rows x = dL/dW_i / dL/db_i within this max abs difference (normalized input space) are one "
                     "sample", above=0),
        "labels": LABELS,
    }

    def applies(self, model, shape, protocol, batch_size):
        return unless_linear_first(model)

    def __init__(self, *, tol: float = 1e-3, labels: str = "inferred"):
        self.tol, self.labels = tol, labels

    def reconstruct(self, view, simulate, generator, progress=None):
        weight, bias = layer_gradients(view.message, first_linear(view.model), "fc-invert")
        scale = bias.abs().max()
        active = bias.abs() > 1e-6 * scale if scale > 0 else torch.zeros_like(bias, dtype=torch.bool)
        if not active.any():
            raise NotApplicable("fc-invert: the first layer's bias gradient is zero")
        candidates = weight[active] / bias[active, None]
        normalized = group_candidates(candidates, bias[active].abs(), view.batch_size, self.tol)
        mean, std = view.model.mean.cpu().double(), view.model.std.cpu().double()
        found = (normalized.view(-1, *view.shape) * std + mean).float().clamp(0, 1)
        images, recovered = fill_slots(found, view.batch_size)
        y = label_methods.resolve(self.labels, view, simulate)
        if progress:
            progress(1)
        return Reconstruction(images, y, 1, extra={"rows": int(active.sum())}, recovered=recovered)


@attack("infer-labels")
class InferLabels(Attack):
    """Label inference only (no images): the label track. ``method`` is one of ``giabench.attacks.labels``."""

    family = "label"
    title = "label inference"
    assumes = "non-negative penultimate features and cross-entropy; llg+ also surrogate data"
    parameters = {
        "method": Param("the label-inference rule of giabench.attacks.labels read off the message (llg+ also needs "
                        "surrogate data)", choices=tuple(label_methods.METHODS)),
    }

    @classmethod
    def for_audit(cls, level, shape):
        return {"method": "llg"}

    def __init__(self, *, method: str = "llg"):
        self.labels = f"inferred:{method}"

    def describe(self):
        return label_methods.TITLES[label_methods.parse(self.labels)]

    def reconstruct(self, view, simulate, generator, progress=None):
        y = label_methods.infer(self.labels, view, simulate)
        if progress:
            progress(1)
        return Reconstruction(None, y, 1)


class ImprintedModel(nn.Module):
    """Robbing the Fed's malicious model: an imprint block in front of the broadcast classifier,
        h = act(W* x + b*),  x' = reshape(W2 h + b2),  logits = classifier(x'),
    with every row of W* the same query ``a`` times a gain, b*_i = -gain * c_i, and W2 all 1/gain."""

    def __init__(self, classifier: nn.Module, query: torch.Tensor, cutoffs: torch.Tensor, widths: torch.Tensor | None,
                 gain: float, shape: tuple[int, int, int]):
        super().__init__()
        bins, dim = cutoffs.numel(), query.numel()
        self.shape, self.gain, self.sparse = shape, gain, widths is not None
        self.imprint = nn.Linear(dim, bins)
        self.expand = nn.Linear(bins, dim)
        scale = gain / widths if widths is not None else torch.full((bins,), gain)
        with torch.no_grad():
            self.imprint.weight.copy_(scale[:, None] * query[None, :])
            self.imprint.bias.copy_(-scale * cutoffs)
            self.expand.weight.fill_(1.0 / gain)
            self.expand.bias.fill_(-float(cutoffs[1:].mean()) if bins > 1 else 0.0)
        self.classifier = classifier

    @property
    def mean(self) -> torch.Tensor:
        return self.classifier.mean

    @property
    def std(self) -> torch.Tensor:
        return self.classifier.std

    @property
    def classifier_weight(self) -> str:
        return f"classifier.{self.classifier.classifier_weight}"

    def forward(self, x):
        h = self.imprint(x.flatten(1))
        h = torch.clamp(h, 0, self.gain) if self.sparse else torch.relu(h)
        return self.classifier(self.expand(h).view(-1, *self.shape))


@attack("rtf")
class RobbingTheFed(Attack):
    """Robbing the Fed (Fowl, Geiping, Czaja, Goldblum, Goldstein, ICLR 2022, Sec. 3): a malicious server inserts an
    imprint block of K bins measuring the query q(x) = a . x (``avg``: mean brightness; ``fourier``: a DCT-II mode;
    ``random``: a random unit direction), with cut-offs c_i at the quantiles F^-1(i/K) of q over surrogate data
    (a normal fit). Cumulative bins: neuron i fires iff q(x) > c_i, so neighbouring rows differ by the samples
    with c_i < q(x) <= c_{i+1} and
        x = (dL/dW_i - dL/dW_{i+1}) / (dL/db_i - dL/db_{i+1})                                  (Eq. 4)
    is exact when that bin holds one sample; the top bin (q(x) > c_{K-1}) is the last row alone,
    x = dL/dW_{K-1} / dL/db_{K-1}. ``sparse``: a hard-tanh neuron is linear only inside its own bin, so
    x = dL/dW_i / dL/db_i without differencing, which survives several local steps. The expected number of bins
    holding exactly one of B samples is B (1 - 1/K)^(B-1)."""

    family = "analytic"
    title = "Robbing the Fed"
    needs = ("modify-model", "surrogate-data")
    assumes = "an active server that inserts the imprint block and knows the query's distribution (surrogate data)"
    parameters = {
        "bins": Param("K, the imprint block's bins (neurons), cut at the quantiles F^-1(i/K) of the query",
                      at_least=2),
        "query": Param("q(x) = a . x the bins measure: avg (mean brightness), fourier (a DCT-II mode), random (a "
                       "random unit direction)", choices=("avg", "fourier", "random")),
        "variant": Param("cumulative (neuron i fires iff q(x) > c_i; rows differenced, Eq. 4) or sparse (hard-tanh "
                         "bins, no differencing)", choices=("cumulative", "sparse")),
        "gain": Param("scale of the imprint weights: rows of W* are gain times the query, W2 is 1/gain", above=0),
        "mode": Param("the DCT-II frequency along the image height of the fourier query (unused otherwise)"),
        "labels": Param("inferred[:METHOD]: how the label score's labels are read off the message (the attack itself "
                        "needs none)"),
    }

    @classmethod
    def for_audit(cls, level, shape):
        return {"bins": 64}

    @classmethod
    def check(cls, params):
        labels = params["labels"]
        checks.require("attack rtf", "labels", labels, labels.startswith("inferred"),
                       "inferred[:METHOD] (the attack needs no labels)")
        super().check(params)

    def __init__(self, *, bins: int = 64, query: str = "avg", variant: str = "cumulative", gain: float = 1.0,
                 mode: int = 1, labels: str = "inferred:llg"):
        self.bins, self.query, self.variant, self.gain, self.mode = bins, query, variant, gain, mode
        self.labels = labels

    def _query(self, shape, generator) -> torch.Tensor:
        c, h, w = shape
        if self.query == "avg":
            return torch.full((c * h * w,), 1.0 / (c * h * w))
        if self.query == "random":
            a = torch.randn(c * h * w, generator=generator)
            return a / a.norm()
        rows = torch.cos(torch.pi * (torch.arange(h) + 0.5) * self.mode / h)  # DCT-II mode along the height
        return (rows[None, :, None].expand(c, h, w) / (c * h * w) ** 0.5).flatten()

    def prepare(self, model, shape, surrogate, generator, batch_size=None):
        if surrogate is None or len(surrogate) < 2:
            raise ConfigError("attack rtf needs surrogate data to place its bins")
        query = self._query(shape, generator)
        cutoffs, widths = self.bin_edges(surrogate.flatten(1).cpu() @ query)
        self.query_vector, self.cutoffs = query, cutoffs  # kept for analysis: which sample falls in which bin
        return ImprintedModel(model, query, cutoffs, widths, self.gain, shape).to(model.mean.device)

    def bin_edges(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cut-offs c_i at the quantiles of a normal fit to the surrogate query values (and, sparse, bin widths)."""
        normal = torch.distributions.Normal(values.mean(), values.std())
        if self.variant == "cumulative":
            inner = normal.icdf(torch.arange(1, self.bins) / self.bins)
            return torch.cat([torch.tensor([values.min() - 10 * values.std()]), inner]), None
        edges = normal.icdf(torch.arange(1, self.bins + 2) / (self.bins + 2))
        return edges[:-1], edges[1:] - edges[:-1]

    def reconstruct(self, view, simulate, generator, progress=None):
        weight, bias = layer_gradients(view.message, "imprint", "rtf")
        if self.variant == "cumulative":  # bin i: row i minus row i+1; the top bin: the last row alone
            weight = torch.cat([weight[:-1] - weight[1:], weight[-1:]])
            bias = torch.cat([bias[:-1] - bias[1:], bias[-1:]])
        occupied = bias.abs() > 1e-9 * bias.abs().max().clamp_min(1e-30)
        strongest = torch.argsort(bias.abs() * occupied, descending=True)[: view.batch_size]
        strongest = strongest[occupied[strongest]]
        found = (weight[strongest] / bias[strongest, None]).float().view(-1, *view.shape).clamp(0, 1)
        images, recovered = fill_slots(found, view.batch_size)
        y = label_methods.infer(self.labels, view, simulate)
        if progress:
            progress(1)
        expected = view.batch_size * (1 - 1 / self.bins) ** (view.batch_size - 1)
        return Reconstruction(images, y, 1, extra={"occupied_bins": int(occupied.sum()),
                                                   "expected_single_bins": expected}, recovered=recovered)
