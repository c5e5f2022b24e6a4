"""FedLeak (Fan, Wang, Chen, Zhou, "Boosting Gradient Leakage Attacks: Data Reconstruction in Realistic FL
Settings", USENIX Security 2025, arXiv 2506.08435), written from the paper's objective and the authors' released code
(Zenodo 10.5281/zenodo.15532455, mirrored as KaimingZhu/FedLeak_transfer_test: generator.py, attack.py).

The images are the output of an untrained convolutional generator, x = G_theta(n) (a fixed noise input n; a
transposed 4x4 stem, blocks of nearest x2 upsampling and two spectral-normalized 3x3 convolutions with batch norm and
LeakyReLU(0.1), a 1x1 convolution to the image channels and a sigmoid), and theta is optimized, not x:
    min_theta  D(x) + lambda ||grad_theta D||^2 + alpha_TV TV(x),
    D(x) = sum_l  mean_i |M_l (g_l(x) - g*_l)|_i  +  1 - cos(M_l g_l(x), M_l g*_l)                (partial matching)
with g* the received update, g(x) the client's update simulated on x and M_l the ``keep`` share of layer l's entries
of largest magnitude in g_l(x) (per layer, as the code selects them). The gradient penalty is taken as the code
takes it, to first order: the signed gradient at theta is mixed with the signed gradient after a trial step,
    s = (1 - rho) sign(grad D(theta)) + rho sign(grad D(theta - eta sign(grad D(theta)))),
then AdamW steps theta with s at rate eta under cosine annealing. TV is the anisotropic mean |dx|."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from giabench.attacks import labels as label_methods
from giabench.attacks.base import LABELS, Attack
from giabench.attacks.optimization import RESTARTS, TV, TV_RANGE, total_variation
from giabench.checks import Param
from giabench.contracts import Reconstruction
from giabench.registry import attack
from giabench.search import Range

NOISE_DIM = 128
EPS = 1e-8


class UntrainedGenerator(nn.Module):
    """FedLeak's image generator for a batch of ``batch`` images of ``shape``; ``width`` channels (the code's 256
    up to 32 px)."""

    def __init__(self, batch: int, shape: tuple[int, int, int], width: int, generator: torch.Generator):
        super().__init__()
        channels, height, wide = shape
        blocks = max(0, math.ceil(math.log2(max(height, wide) / 4)))
        self.shape = shape
        self.stem = nn.Sequential(nn.ConvTranspose2d(NOISE_DIM, width, 4), nn.BatchNorm2d(width), nn.LeakyReLU(0.1))
        self.blocks = nn.ModuleList(nn.Sequential(
            spectral_norm(nn.Conv2d(width, width, 3, padding=1)), nn.BatchNorm2d(width), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(width, width, 3, padding=1)), nn.BatchNorm2d(width), nn.LeakyReLU(0.1))
            for _ in range(blocks))
        self.out = nn.Conv2d(width, channels, 1)
        self.register_buffer("noise", torch.randn(batch, NOISE_DIM, 1, 1, generator=generator))

    def forward(self) -> torch.Tensor:
        h = self.stem(self.noise)
        for block in self.blocks:
            h = block(F.interpolate(h, scale_factor=2, mode="nearest"))
        x = torch.sigmoid(self.out(h))
        return x if x.shape[-2:] == self.shape[1:] else F.interpolate(x, size=self.shape[1:], mode="bilinear",
                                                                       align_corners=False)


def partial_distance(sim: dict, obs: dict, keep: float) -> torch.Tensor:
    """D: per layer, L1 (mean over the layer) plus 1 - cosine on the ``keep`` share of entries of largest |sim|."""
    total = 0.0
    for key, target in obs.items():
        s, o = sim[key].flatten(), target.flatten()
        k = max(1, math.ceil(keep * s.numel()))
        threshold = s.detach().abs().kthvalue(s.numel() - k + 1).values
        mask = (s.detach().abs() >= threshold).to(s.dtype)
        ms, mo = mask * s, mask * o
        total = total + (ms - mo).abs().mean() + 1 - (ms @ mo) / (ms.norm() * mo.norm() + EPS)
    return total


@attack("fedleak")
class FedLeak(Attack):
    """Partial gradient matching through an untrained generator, with gradient regularization (see the module)."""

    title = "FedLeak"
    needs = ("priors",)
    assumes = "an untrained convolutional generator as the image prior, total variation; labels known (or inferred)"
    parameters = {
        "iterations": Param("AdamW steps on the generator's weights per restart", at_least=1),
        "lr": Param("eta, AdamW's step size (cosine-annealed to 0) and the trial step of the regularization",
                    above=0),
        "keep": Param("the share of each layer's entries matched (largest |g_l(x)|; the code's 0.5)", above=0,
                      at_most=1),
        "regularization": Param("rho, the weight of the signed gradient after the trial step (the code's 0.3; 0: "
                                "no gradient regularization)", at_least=0, at_most=1),
        "tv": TV,
        "width": Param("channels of the generator's layers (the code's 256)", at_least=1),
        "restarts": RESTARTS,
        "labels": LABELS,
    }

    @classmethod
    def for_audit(cls, level, shape):
        return {"iterations": {"quick": 50, "standard": 500, "thorough": 2000}[level], "width": 64}

    @classmethod
    def search_space(cls, shape):
        return {"lr": Range(1e-4, 0.1, log=True), "keep": Range(0.1, 1.0), "regularization": Range(0.0, 1.0),
                "tv": TV_RANGE}

    def __init__(self, *, iterations: int = 2000, lr: float = 0.01, keep: float = 0.5, regularization: float = 0.3,
                 tv: float = 1e-5, width: int = 256, restarts: int = 1, labels: str = "known"):
        self.iterations, self.lr, self.keep, self.regularization = iterations, lr, keep, regularization
        self.tv, self.width, self.restarts, self.labels = tv, width, restarts, labels

    def objective(self, net: UntrainedGenerator, y, simulate, obs) -> torch.Tensor:
        x = net()
        return partial_distance(simulate(x, y), obs, self.keep) + self.tv * total_variation(x)

    def reconstruct(self, view, simulate, generator, progress=None):
        device = view.model.mean.device
        y = label_methods.resolve(self.labels, view, simulate).to(device)
        obs = {k: v.to(device) for k, v in view.message.items()}
        trace: list = []
        best = None
        for _ in range(self.restarts):
            net = self._generator(view, generator).to(device)
            final = self._optimize(net, y, simulate, obs, trace, progress)
            if best is None or final < best[0]:
                with torch.no_grad():
                    best = (final, net().detach().cpu())
        return Reconstruction(best[1], y.cpu(), self.iterations * self.restarts, trace, {"objective": best[0]})

    def _generator(self, view, generator: torch.Generator) -> UntrainedGenerator:
        """A fresh generator, its initialization drawn from the cell's generator (torch's global one is forked)."""
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UntrainedGenerator(view.batch_size, view.shape, self.width, generator)

    def _optimize(self, net, y, simulate, obs, trace, progress) -> float:
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.iterations)

        def signed_gradient():
            loss = self.objective(net, y, simulate, obs)
            return loss, [g.sign() for g in torch.autograd.grad(loss, params)]

        for step in range(self.iterations):
            loss, signs = signed_gradient()
            if self.regularization > 0:
                saved = [p.detach().clone() for p in params]
                with torch.no_grad():
                    for p, s in zip(params, signs, strict=True):
                        p.sub_(optimizer.param_groups[0]["lr"] * s)
                _, ahead = signed_gradient()
                with torch.no_grad():
                    for p, old in zip(params, saved, strict=True):
                        p.copy_(old)
                signs = [(1 - self.regularization) * s + self.regularization * a
                         for s, a in zip(signs, ahead, strict=True)]
            for p, s in zip(params, signs, strict=True):
                p.grad = s
            optimizer.step()
            schedule.step()
            if step % 10 == 0:
                trace.append(float(loss.detach()))
            if progress:
                progress(1)
        # with autograd on: a client that trains inside its simulation (HideNseek's scores) differentiates there
        return float(self.objective(net, y, simulate, obs).detach())
