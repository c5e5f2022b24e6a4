"""Optimization-based gradient inversion: find dummy data whose simulated message matches the observed one.

All attacks here are adaptive: the objective compares the observed message m with ``simulate(x_hat, y_hat)``, the
defended client's deterministic transform of the protocol's update, so clipping, masks and local steps are inside it.
"""

from __future__ import annotations

import math

import torch

from giabench.attacks import labels as label_methods
from giabench.attacks.base import LABELS, Attack
from giabench.checks import Param
from giabench.contracts import Reconstruction
from giabench.errors import NotApplicable
from giabench.registry import attack
from giabench.search import Range


def l2_distance(sim: dict, obs: dict) -> torch.Tensor:
    """DLG's objective (Zhu et al., NeurIPS 2019, Eq. 4): sum_l || g'_l - g_l ||^2."""
    return sum(((sim[k] - obs[k]) ** 2).sum() for k in obs)


def cosine_distance(sim: dict, obs: dict) -> torch.Tensor:
    """Inverting Gradients' objective (Geiping et al., NeurIPS 2020, Eq. 4), all layers jointly:
    1 - <g', g> / (||g'|| ||g||), differentiable in the simulated g' (see ``_CosineDistance``)."""
    keys = list(obs)
    return _CosineDistance.apply(len(keys), *(obs[k] for k in keys), *(sim[k] for k in keys))[0]


class _CosineDistance(torch.autograd.Function):
    """1 - <s, o> / (||s|| ||o|| + 1e-12) over lists of tensors, with its gradient in s written out,
        d/ds_k = -o_k / D + <s, o> ||o|| s_k / (||s|| D^2),   D = ||s|| ||o|| + 1e-12,
    so each layer costs a dot product and a norm forward and one scaled sum backward, where autograd's elementwise
    products, squares and sums pass over the model's parameters several times (an attack iteration on a large model
    at batch 1 spends much of its time there). Returns (distance, <s, o>, ||s||, ||o||); vmap-able (restarts)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(n: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flat = [(s.reshape(-1), o.reshape(-1)) for s, o in zip(tensors[n:], tensors[:n], strict=True)]
        dot = sum(torch.dot(s, o) for s, o in flat)
        norm_sim = torch.sqrt(sum(torch.linalg.vector_norm(s) ** 2 for s, _ in flat))
        norm_obs = torch.sqrt(sum(torch.linalg.vector_norm(o) ** 2 for _, o in flat))
        return 1 - dot / (norm_sim * norm_obs + 1e-12), dot, norm_sim, norm_obs

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.n = inputs[0]
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*output[1:], *inputs[1:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, *_unused) -> tuple[torch.Tensor | None, ...]:
        dot, norm_sim, norm_obs, *tensors = ctx.saved_tensors
        obs, sim = tensors[:ctx.n], tensors[ctx.n:]
        denominator = norm_sim * norm_obs + 1e-12
        on_obs, on_sim = -grad / denominator, grad * dot * norm_obs / (norm_sim * denominator ** 2)
        return (None, *(None,) * ctx.n, *(torch.addcmul(s * on_sim, o, on_obs) for s, o in zip(sim, obs, strict=True)))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV: mean |x_{h+1,w} - x_{h,w}| + mean |x_{h,w+1} - x_{h,w}|."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def initial_images(view, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with the dataset's pixel mean and std (N(0, I) in the model's normalized space)."""
    mean, std = view.model.mean.cpu(), view.model.std.cpu()
    noise = torch.randn((view.batch_size, *view.shape), generator=generator)
    return (mean + std * noise).to(view.model.mean.device)


@attack("dlg")
class DLG(Attack):
    """Deep Leakage from Gradients (Zhu, Liu, Han, NeurIPS 2019, Alg. 1): L-BFGS on the dummy images (and, with
    ``labels: optimized``, on dummy label logits y' = softmax(v)) minimizing sum_l || g'_l - g_l ||^2 (Eq. 4).
    One iteration is one L-BFGS step with one gradient evaluation."""

    title = "DLG"
    assumes = "no prior; labels optimized jointly (or known / inferred)"
    label_modes = ("optimized",)
    parameters = {
        "iterations": Param("L-BFGS steps, one gradient evaluation each", at_least=1),
        "lr": Param("L-BFGS step size", above=0),
        "labels": Param("optimized (dummy label logits optimized with the images, as in DLG), known, or "
                        "inferred[:METHOD] from the message"),
    }

    @classmethod
    def for_audit(cls, level, shape):
        raise NotApplicable("not in the battery: iDLG (the same objective, its label read off the gradient) and IG "
                            "stand for it")

    @classmethod
    def search_space(cls, shape):
        return {"lr": Range(0.01, 10.0, log=True)}

    def __init__(self, *, iterations: int = 300, lr: float = 1.0, labels: str = "optimized"):
        self.iterations, self.lr, self.labels = iterations, lr, labels

    def reconstruct(self, view, simulate, generator, progress=None):
        device = view.model.mean.device
        fixed = label_methods.resolve(self.labels, view, simulate)
        x = initial_images(view, generator).clamp(0, 1).requires_grad_(True)
        variables = [x]
        if fixed is None:
            logits = torch.randn((view.batch_size, view.num_classes), generator=generator).to(device)
            logits.requires_grad_(True)
            variables.append(logits)
        optimizer = torch.optim.LBFGS(variables, lr=self.lr, max_iter=1, history_size=100)
        obs = {k: v.to(device) for k, v in view.message.items()}
        best = (math.inf, x.detach().clone())
        trace = []

        def closure():
            optimizer.zero_grad()
            y = fixed.to(device) if fixed is not None else torch.softmax(logits, dim=-1)
            loss = l2_distance(simulate(x, y), obs)
            loss.backward()
            return loss

        steps = 0
        while steps < self.iterations:
            steps += 1
            before = x.detach().clone()
            loss = optimizer.step(closure).item()  # the objective at ``before``
            if not math.isfinite(loss):  # L-BFGS without line search can diverge; keep the best iterate
                break
            if loss < best[0]:
                best = (loss, before)
            trace.append(loss)
            if progress:
                progress(1)
        labels = fixed if fixed is not None else logits.detach().argmax(dim=-1)
        return Reconstruction(best[1].clamp(0, 1).cpu(), labels.cpu(), steps, trace, {"objective": best[0]})


@attack("idlg")
class IDLG(DLG):
    """Improved DLG (Zhao, Mopuri, Bilen, arXiv 2001.02610): the label is read off the sign of the last layer's
    weight gradient (Sec. 3, see ``giabench.attacks.labels``), then DLG runs with that label fixed."""

    title = "iDLG"
    assumes = "labels inferred from the last layer's gradient (iDLG rule)"

    @classmethod
    def for_audit(cls, level, shape):
        return {"iterations": {"quick": 50, "standard": 300, "thorough": 1000}[level]}

    def applies(self, model, shape, protocol, batch_size):
        rule = self.labels in ("inferred", "inferred:idlg")
        return "its label rule needs batch 1" if rule and batch_size != 1 else None

    def __init__(self, *, iterations: int = 300, lr: float = 1.0, labels: str = "inferred"):
        super().__init__(iterations=iterations, lr=lr, labels=labels)


#: the parameters of Inverting Gradients' optimizer, documented alike wherever an attack runs it
SIGNED_ADAM_LR = Param("Adam step size in the normalized pixel space, decayed by 10 at 3/8, 5/8 and 7/8 of the run",
                       above=0)
TV = Param("alpha_TV, the weight of the total-variation prior", at_least=0)
RESTARTS = Param("independent runs from fresh random images; the lowest final objective wins", at_least=1)
#: the ranges ``giabench tune`` searches for these, wherever an attack takes them
STEP_RANGE = Range(1e-3, 1.0, log=True)
TV_RANGE = Range(1e-7, 1.0, log=True)


def signed_adam(leaves: list[torch.Tensor], objective, iterations: int, lr: float, project, trace: list,
                progress=None) -> None:
    """Inverting Gradients' optimizer: Adam on the sign of each leaf's gradient, step ``lr`` decayed by 10 at 3/8, 5/8
    and 7/8 of the run, ``project()`` (in place, without grad) after every step. ``objective()`` returns a scalar, or
    one loss per independent problem (batched restarts: their sum is differentiated, and Adam, being elementwise,
    steps each as if alone); it is sampled every ten steps into ``trace`` (a float, or a list per problem)."""
    optimizer = torch.optim.Adam(leaves, lr=lr)
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    for step in range(iterations):
        optimizer.zero_grad()
        loss = objective()
        for leaf, grad in zip(leaves, torch.autograd.grad(loss.sum(), leaves), strict=True):
            leaf.grad = grad.sign()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            project()
        if step % 10 == 0:
            trace.append(loss.detach().tolist())
        if progress:
            progress(1)


#: Largest R x parameters for which IG batches its restarts on CPU. benchmarks/restart_batching.py (1 thread, R=8,
#: batched/sequential time): lenet (R x P = 0.13M) 0.61, convnet16 (1.5M) 0.83, mlp (6.3M) 1.19, convnet64 (23M) 1.06.
CPU_BATCHED_RESTART_FLOATS = 4_000_000


@attack("ig")
class InvertingGradients(Attack):
    """Inverting Gradients (Geiping, Bauermeister, Droege, Moeller, NeurIPS 2020, Eq. 4):
        argmin_{x in [0,1]^n}  1 - <grad L(x, y), g> / (||grad L(x, y)|| ||g||) + alpha_TV * TV(x),
    optimized, as in the paper, in the model's normalized space z = (x - mean) / std (so ``lr`` and ``tv`` keep the
    paper's meaning): Adam on the *signed* gradient of z, step size ``lr`` decayed by 10 at 3/8, 5/8 and 7/8 of the
    run, pixels clamped to [0, 1] after every step, and ``restarts`` independent runs of which the lowest final
    objective wins. Where the client's simulation can be vmapped (``Client.vmappable``), its second derivatives
    stay exact (``Protocol.vmap_exact``: no batch norm in train mode) and, on CPU, the model is small enough
    (``Protocol.vmap_pays``), several restarts run together, the objective vmapped over them: the same starting points
    and steps as one after another (Adam is elementwise), at a fraction of R restarts' time where per-call overhead
    dominates (lenet: 8 restarts in 2.7x the time of one); only the batched kernels' float rounding differs from
    running them one by one."""

    title = "IG"
    needs = ("priors",)
    assumes = "image priors (total variation, pixel box); labels known (or inferred)"
    parameters = {
        "iterations": Param("signed-Adam steps per restart", at_least=1),
        "lr": SIGNED_ADAM_LR,
        "tv": TV,
        "restarts": RESTARTS,
        "labels": LABELS,
    }

    @classmethod
    def for_audit(cls, level, shape):
        return {"iterations": {"quick": 50, "standard": 500, "thorough": 2000}[level],
                "restarts": {"quick": 1, "standard": 1, "thorough": 2}[level]}

    @classmethod
    def search_space(cls, shape):
        return {"lr": STEP_RANGE, "tv": TV_RANGE}

    def __init__(self, *, iterations: int = 1000, lr: float = 0.1, tv: float = 1e-4, restarts: int = 1,
                 labels: str = "known"):
        self.iterations, self.lr, self.tv, self.restarts, self.labels = iterations, lr, tv, restarts, labels

    def objective(self, z, y, simulate, obs, mean, std):
        return cosine_distance(simulate(mean + std * z, y), obs) + self.tv * total_variation(z)

    def reconstruct(self, view, simulate, generator, progress=None):
        device = view.model.mean.device
        y = label_methods.resolve(self.labels, view, simulate).to(device)
        obs = {k: v.to(device) for k, v in view.message.items()}
        mean, std = view.model.mean, view.model.std
        low, high = (0 - mean) / std, (1 - mean) / std
        starts = [(initial_images(view, generator) - mean) / std for _ in range(self.restarts)]
        trace: list = []
        if self._batch_restarts(view, simulate):
            finals, images = self._batched(torch.stack(starts), y, simulate, obs, mean, std, low, high, trace, progress)
        else:
            finals, images = self.one_by_one(starts, y, simulate, obs, mean, std, trace, progress)
        best = min(range(self.restarts), key=lambda r: finals[r])
        return Reconstruction(images[best].clone().cpu(), y.cpu(), self.iterations * self.restarts, trace,
                              {"objective": finals[best]})

    def one_by_one(self, starts, y, simulate, obs, mean, std, trace, progress=None):
        """Each start (normalized space) optimized in turn: the final objectives and the images."""
        low, high = (0 - mean) / std, (1 - mean) / std
        finals, images = [], []
        for z in starts:
            z.requires_grad_(True)
            signed_adam([z], lambda z=z: self.objective(z, y, simulate, obs, mean, std), self.iterations, self.lr,
                        lambda z=z: z.copy_(torch.maximum(torch.minimum(z, high), low)), trace, progress)
            finals.append(float(self.objective(z.detach(), y, simulate, obs, mean, std)))
            images.append((mean + std * z).detach())
        return finals, images

    def _batch_restarts(self, view, simulate) -> bool:
        """Whether the restarts run vmapped together: the client's simulation must allow it (``Client.vmappable``)
        and the protocol must find it exact and worth it (``Protocol.vmap_pays``: on CPU, R x parameters at most
        ``CPU_BATCHED_RESTART_FLOATS``; past that the batched pass, which materializes R weight gradients where one
        restart holds one, was measured slower, benchmarks/restart_batching.py)."""
        client = getattr(simulate, "__self__", None)
        return (self.restarts > 1 and getattr(client, "vmappable", False)
                and view.protocol.vmap_pays(self.restarts, CPU_BATCHED_RESTART_FLOATS))

    def _batched(self, z, y, simulate, obs, mean, std, low, high, trace, progress):
        """All restarts as one leaf of shape (R, B, C, H, W); the trace is written restart by restart, as the
        sequential path writes it."""
        batched = torch.func.vmap(lambda one: self.objective(one, y, simulate, obs, mean, std))
        z.requires_grad_(True)
        sampled: list = []
        signed_adam([z], lambda: batched(z), self.iterations, self.lr,
                    lambda: z.copy_(torch.maximum(torch.minimum(z, high), low)), sampled,
                    progress and (lambda steps: progress(steps * self.restarts)))
        trace.extend(value for restart in zip(*sampled, strict=True) for value in restart)
        return batched(z.detach()).tolist(), list((mean + std * z).detach())
