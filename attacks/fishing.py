"""Fishing (Wen, Geiping, Fowl, Goldblum, Goldstein, ICML 2022, "Fishing for User Data in Large-Batch Federated
Learning via Gradient Magnification"): an active server rewrites the last layer z = W h + b of the broadcast model so
that the mean gradient of a large batch is, in every layer below it, the gradient of one image, then inverts that
image alone with Inverting Gradients.

For cross-entropy, sample k reaches the layers below through dL_k/dh_k = W^T (p_k - e_{y_k}). With every row but the
target class t's equal to 0 and its bias ``gap`` (large),
    dL_k/dh_k = w_t (p_{k,t} - 1[y_k = t]),    p_{k,t} = e^{z_t} / (e^{z_t} + (C - 1) e^{gap}),
so while z_t << gap (p_t ~ 0) only the images of class t reach the body (coefficient -1), and once z_t >> gap (p_t ~ 1)
only the images of other classes do (coefficient +1).
- ``class`` fishing (Sec. 3.1): row t kept as broadcast, so z_t << gap for every image and the body's gradient is the
  sum of the single gradients of the batch's images of class t: one image, when the class is rare in the batch.
- ``feature`` fishing (Sec. 3.2), for a class with several images in the batch: the target row reads one penultimate
  feature f, z_t = gap + m (h_f - c) with slope m and cut-off c, so an image of class t reaches the body iff
  h_f < c and an image of another class iff h_f > c, either only through an active h_f (a ReLU feature at 0 passes
  no gradient). The server picks (f, c) from surrogate data split into class t and the rest by the broadcast
  model's own predictions, so that one image of the batch reaching the body is likeliest (``feature_cutoff``): a
  trained model, whose features tell the classes apart, is what makes this possible.
The attacker reads which kind of image took the bait from the sign of dL/db_t (class fishing: -n_t / B) or of
dL/dW_{t,f} (feature fishing, non-negative features: negative means class t) and matches, with IG's cosine distance,
the gradients of the body and of row t and b_t (feature fishing: of W_{t,f} alone) against one dummy image: the
other rows mix every image, and under feature fishing so do b_t and W_{t,j != f}, which images with an inactive h_f
reach. The batch's mean gradient and the caught image's own then differ by the factor B, which the cosine ignores,
and by whatever other images leaked.

Measured (``benchmarks/fishing_batch.py``, IG 1000 iterations, 1 thread; the caught image against the same fished
model and attack on that image alone): feature fishing through an MLP (256 ReLU units) trained for 300 steps on
mnist-5k, 20 random batches each: one image carries > 99 % of the body's gradient in 8 of 20 batches at B = 64 and 8
of 20 at B = 256, and there the caught image is 1.7 dB (B = 64) and 2.5 dB (B = 256) below its single-image
reconstruction on average (33.5 and 35.3 dB); over all 20 batches 12.6 and 13.7 dB below (two or three images
caught, or none). Class fishing on cifar100-sample through an untrained LeNet at B = 16 (the class of one batch image):
0.9 dB below B = 1 on average over 10 batches (one image of the class in 7). Wen et al. reconstruct single target
images from ImageNet batches of up to 256 through ResNet-18 (their figures are not readable here, so no number of
theirs is set beside ours); one cut-off, one round, as here, catches exactly one image with probability about 1/e.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from giabench.attacks.base import Attack
from giabench.attacks.optimization import STEP_RANGE, TV_RANGE, InvertingGradients, initial_images
from giabench.checks import Param
from giabench.contracts import UNFILLED, Reconstruction
from giabench.errors import ConfigError, NotApplicable
from giabench.registry import attack

MODES = ("class", "feature")
STARTS = 8  # surrogate images kept as starting points of the inversion (feature fishing)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: the model's last ``nn.Linear`` (its output is the logits), which must carry a bias."""
    name = model.classifier_weight.rsplit(".", 1)[0]
    layer = model.get_submodule(name)
    if layer.bias is None:
        raise NotApplicable("fishing rewrites the last layer's bias, and this model's last linear layer has none")
    return name, layer


def penultimate(model: nn.Module, images: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Features h (the last layer's input) and predicted classes of ``images`` on a copy of ``model``."""
    probe = copy.deepcopy(model)
    _, layer = last_linear(probe)
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    predicted = []
    with torch.no_grad():
        for start in range(0, len(images), chunk):
            predicted.append(probe(images[start:start + chunk].to(model.mean.device)).argmax(1))
    hook.remove()
    return torch.cat(seen).cpu(), torch.cat(predicted).cpu()


def class_head(head: nn.Linear, target: int, gap: float) -> None:
    """Class fishing's classifier, in place: every row but the target's 0 with bias ``gap``; row t as broadcast."""
    with torch.no_grad():
        weight, bias = head.weight[target].clone(), head.bias[target].clone()
        head.weight.zero_()
        head.bias.fill_(gap)
        head.weight[target], head.bias[target] = weight, bias


def feature_head(head: nn.Linear, target: int, gap: float, feature: int, cut: float, slope: float) -> None:
    """Feature fishing's classifier, in place: z_j = gap for j != t and z_t = gap + slope (h_f - cut)."""
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(gap)
        head.weight[target, feature] = slope
        head.bias[target] = gap - slope * cut


def reach(h: torch.Tensor, cut: torch.Tensor, slope: float, classes: int, target: bool) -> torch.Tensor:
    """How strongly an image with feature h_f = ``h`` reaches the body: its coefficient |p_t - 1[y = t]| at
    z_t - gap = slope (h_f - cut), with p_t = 1 / (1 + (C - 1) e^(-(z_t - gap)))."""
    p = torch.sigmoid(slope * (h - cut) - torch.log(torch.tensor(classes - 1.0)))
    return 1 - p if target else p


def feature_cutoff(target: torch.Tensor, others: torch.Tensor, expected: float, batch_size: int, sharpness: float,
                   classes: int, candidates: int = 64) -> tuple[int, float, float, float]:
    """The feature f, cut-off c and slope m = ``sharpness`` / std(active h_f) of feature fishing that make one image
    reaching the body likeliest. Over the surrogate features of the target class and of the others, an image reaches
    it with weight ``reach`` when h_f is active (!= 0); the batch's n_t = ``expected`` images of class t then reach it
    about Poisson(l_t) times, l_t = n_t E_t[reach 1(h_f != 0)], its B - n_t others Poisson(l_o) times, and each
    candidate cut-off (``candidates`` quantiles of the target's active h_f) scores
    P(one of class t, none other) = l_t e^(-l_t - l_o). Returns (f, c, m, l_o)."""
    best = None
    levels = torch.linspace(0, 1, candidates)
    for f in range(target.shape[1]):
        h_t, h_o = target[:, f][target[:, f] != 0], others[:, f][others[:, f] != 0]
        if len(h_t) < 2:
            continue
        slope = sharpness / float(torch.cat([h_t, h_o]).std().clamp_min(1e-12))
        cuts = torch.quantile(h_t, levels)[:, None]
        lam_t = expected * reach(h_t[None], cuts, slope, classes, True).sum(1) / len(target)
        lam_o = (batch_size - expected) * reach(h_o[None], cuts, slope, classes, False).sum(1) / max(len(others), 1)
        score = lam_t * torch.exp(-lam_t - lam_o)
        k = int(score.argmax())
        if best is None or float(score[k]) > best[0]:
            best = (float(score[k]), f, float(cuts[k]), slope, float(lam_o[k]))
    if best is None:
        raise NotApplicable("feature fishing found no penultimate feature active on two surrogate images of the "
                            "target class")
    return best[1:]


@attack("fishing")
class Fishing(Attack):
    """Fishing (Wen, Geiping, Fowl, Goldblum, Goldstein, ICML 2022): the server zeroes every classifier row but the
    target class t's and gives the others bias ``gap``, so dL_k/dh_k = w_t (p_{k,t} - 1[y_k = t]) reaches the body
    for the images of class t alone (``class``), or, with z_t = gap + m (h_f - c), for the one image beyond a
    penultimate feature's cut-off (``feature``); then IG on that magnified gradient (see the module docstring)."""

    family = "analytic"  # the SoK's ANA-GIA (ii), parameter modification; the inversion itself is IG's
    closed_form = False
    title = "Fishing"
    needs = ("modify-model", "priors")
    assumes = ("an active server that rewrites the last layer (feature fishing: surrogate data to place the cut-off); "
               "FedSGD, no batch norm in train mode")
    parameters = {
        "mode": Param("class: catch the batch's images of class t; feature: the one image past a penultimate "
                      "feature's cut-off", choices=MODES),
        "target_class": Param("t, the class whose classifier row stays (class) or reads the feature (feature)",
                              at_least=0),
        "gap": Param("the bias of every non-target logit; large, so that p_t ~ 0 while z_t << gap", above=0),
        "sharpness": Param("feature fishing's slope m = sharpness / std of feature f's active surrogate values",
                           above=0),
        "dummies": Param("dummy images inverted (0: n_t from the bait under class fishing, 1 under feature), "
                         "capped at the batch size", at_least=0),
        "iterations": Param("IG's signed-Adam steps per restart and per kind of caught image tried", at_least=1),
        "lr": Param("IG's Adam step size in the normalized pixel space", above=0),
        "tv": Param("alpha_TV, the weight of IG's total-variation prior", at_least=0),
        "restarts": Param("IG runs (feature fishing's first from surrogate starts); the lowest final objective wins",
                          at_least=1),
    }

    @classmethod
    def for_audit(cls, level, shape):
        return {"iterations": {"quick": 50, "standard": 500, "thorough": 2000}[level]}

    @classmethod
    def search_space(cls, shape):
        return {"lr": STEP_RANGE, "tv": TV_RANGE}

    def applies(self, model, shape, protocol, batch_size):
        if protocol != "fedsgd":
            return "the magnified gradient is one step's: FedSGD only"
        return None

    def __init__(self, *, mode: str = "class", target_class: int = 0, gap: float = 1000.0, sharpness: float = 10.0,
                 dummies: int = 0, iterations: int = 1000, lr: float = 0.1, tv: float = 1e-4, restarts: int = 1):
        self.mode, self.target_class, self.gap, self.sharpness = mode, target_class, gap, sharpness
        self.dummies, self.iterations, self.lr, self.tv, self.restarts = dummies, iterations, lr, tv, restarts
        self.ig = InvertingGradients(iterations=iterations, lr=lr, tv=tv, labels="known")
        self.fished: dict = {}
        self.starts: dict[str, torch.Tensor] = {}

    def parameter_needs(self):
        return {"surrogate-data"} if self.mode == "feature" else set()

    def prepare(self, model, shape, surrogate, generator, batch_size=None):
        self.starts = {}
        classes, t = last_linear(model)[1].out_features, self.target_class
        if t >= classes:
            raise ConfigError(f"attack fishing: target_class must be below the model's {classes} classes, got {t}",
                              field="target_class")
        fished = copy.deepcopy(model)
        head = last_linear(fished)[1]
        if self.mode == "class":
            class_head(head, t, self.gap)
            self.fished = {"target_class": t}
        else:
            f, cut, slope, leak = self._place_cutoff(model, surrogate, batch_size, classes)
            feature_head(head, t, self.gap, f, cut, slope)
            self.fished = {"target_class": t, "feature": f, "cutoff": cut, "slope": slope,
                           "expected_other_leakers": leak}
        return fished

    def _place_cutoff(self, model, surrogate, batch_size, classes):
        if surrogate is None or len(surrogate) < 2:
            raise ConfigError("attack fishing with mode: feature needs surrogate data to place its cut-off")
        if batch_size is None:
            raise ConfigError("attack fishing with mode: feature needs the client's batch size to place its cut-off")
        features, predicted = penultimate(model, surrogate)
        mine = predicted == self.target_class
        if mine.sum() < 2:
            raise NotApplicable(f"the broadcast model assigns {int(mine.sum())} surrogate images to target class "
                                f"{self.target_class}: too few to place feature fishing's cut-off")
        expected = batch_size * float(mine.float().mean())
        f, cut, slope, leak = feature_cutoff(features[mine], features[~mine], expected, batch_size, self.sharpness,
                                             classes)
        for kind, rows in (("target", mine), ("other", ~mine)):  # the inversion's starts, per caught kind
            weight = reach(features[:, f], torch.tensor(cut), slope, classes, kind == "target")
            strongest = torch.argsort(weight * rows * (features[:, f] != 0), descending=True)[:STARTS]
            self.starts[kind] = surrogate[strongest].clone()
        return f, cut, slope, leak

    def reconstruct(self, view, simulate, generator, progress=None):
        if not self.fished:
            raise ConfigError("attack fishing reconstructs from the model its prepare() broadcast; call it first")
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in view.model.modules()):
            raise NotApplicable("batch norm in train mode couples every image's gradient to the whole batch: fishing "
                                "cannot single one out")
        name = last_linear(view.model)[0]
        t = self.fished["target_class"]
        weight, bias = f"{name}.weight", f"{name}.bias"
        if weight not in view.message or bias not in view.message:
            raise NotApplicable("fishing reads the last layer's gradient, which this message does not carry in the "
                                "clear")
        # class fishing: dL/db_t = -n_t / B; feature fishing: dL/dW_{t,f} = (1/B) sum_k coefficient_k h_{k,f}, which
        # images with an inactive h_f (no gradient to the body) leave untouched
        bait = float(view.message[bias][t] if self.mode == "class" else view.message[weight][t, self.fished["feature"]])
        images = torch.full((view.batch_size, *view.shape), UNFILLED)
        recovered = torch.zeros(view.batch_size, dtype=torch.bool)
        extra = {**self.fished, "bait": bait}

        def magnified(update):
            kept = {k: v for k, v in update.items() if k not in (weight, bias)}
            if self.mode == "feature":  # dL/db_t and dL/dW_{t,j != f} also count images with an inactive h_f
                f = self.fished["feature"]
                return {**kept, weight: update[weight][t, f:f + 1]}
            return {**kept, weight: update[weight][t], bias: update[bias][t:t + 1]}

        obs = magnified({k: v.to(view.model.mean.device) for k, v in view.message.items()})
        norm = torch.sqrt(sum((v.double() ** 2).sum() for k, v in obs.items() if k not in (weight, bias))).float()
        if norm == 0:  # no image reached the layers below
            return Reconstruction(images, None, 0, extra={**extra, "caught": False}, recovered=recovered)
        obs = {k: v / norm for k, v in obs.items()}  # unit norm: the 1/B of a mean, or a weak catch, stays far
        # above the cosine distance's 1e-12 guard, so the match does not depend on the batch size
        # the kind of image caught: the bait's sign; where a defense zeroed the bait (pruning), feature fishing tries
        # both kinds and keeps the better match
        kinds = ["target"] if self.mode == "class" or bait < 0 else ["other"] if bait > 0 else ["target", "other"]
        count = self.dummies or (max(1, round(-bait * view.batch_size)) if self.mode == "class" else 1)
        count = min(count, view.batch_size)
        tries = [(kind, *self._invert(view, obs, lambda x, y: magnified(simulate(x, y)),
                                      t if kind == "target" else (t + 1) % view.num_classes,  # any other class
                                      count, kind, generator, progress)) for kind in kinds]
        kind, found, objective, trace = min(tries, key=lambda attempt: attempt[2])
        images[:count], recovered[:count] = found, True
        return Reconstruction(images, None, self.iterations * self.restarts * len(kinds), trace,
                              {**extra, "caught": True, "caught_class": kind, "dummies": count,
                               "objective": objective}, recovered=recovered)

    def _invert(self, view, obs, simulate, label, count, kind, generator, progress):
        """IG (Geiping et al., Eq. 4) on ``count`` dummy images (``InvertingGradients.one_by_one``), the lowest final
        objective of ``restarts`` winning. Restart 0 of feature fishing starts from the surrogate images that reach
        the body most strongly as the caught kind: a start whose feature h_f is inactive, or deep on the far side of
        the cut-off (where 1 - p_t rounds to 0 in float32), passes no gradient at all."""
        mean, std = view.model.mean, view.model.std
        few = dataclasses.replace(view, batch_size=count)
        starts = []
        for restart in range(self.restarts):
            start = initial_images(few, generator)
            if restart == 0 and kind in self.starts:
                seeds = self.starts[kind][:count].to(mean.device)
                start[:len(seeds)] = seeds
            starts.append((start - mean) / std)
        trace: list = []
        finals, images = self.ig.one_by_one(starts, torch.full((count,), label, device=mean.device), simulate, obs,
                                            mean, std, trace, progress)
        best = min(range(self.restarts), key=lambda r: finals[r])
        return images[best].cpu(), finals[best], trace
