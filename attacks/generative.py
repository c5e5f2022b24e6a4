"""Generation-based attacks: search a generator trained on the client's kind of data (threat model D: the generator is
the surrogate knowledge) for images whose simulated update matches the message. All three use the cosine
gradient-matching loss of Inverting Gradients plus total variation,
    L(x) = 1 - <u(x, y), m> / (||u(x, y)|| ||m||) + alpha_TV TV(x),      u = the defended client's ``simulate``,
so they adapt to a defense exactly as ``ig`` does, and take known or inferred labels.

- ``gias`` (Jeon et al., "Gradient Inversion with Generative Image Prior", NeurIPS 2021, Sec. 3): stage 1 searches
  the latent, z* = argmin_z L(G(z)) (Adam); stage 2 fine-tunes a copy of the generator per image,
  w_j* = argmin_w L(G_{w_j}(z_j*)), starting from the pretrained weights.
- ``ggl`` (Li et al., "Auditing Privacy Defenses in Federated Learning via Generative Gradient Leakage", CVPR 2022,
  Eq. 4): gradient-free CMA-ES over z with the KL prior of z's entries towards N(0, 1),
  min_z L(G(z)) + lambda_KL KL(N(mu_z, s_z^2) || N(0, 1)).
- ``gifd`` (Fang et al., "GIFD: A Generative Gradient Inversion Method with Feature Domain Optimization",
  ICCV 2023, Alg. 1): with G = G_N o ... o G_0, round 0 optimizes z (kept on the sphere of its initial norm);
  round k optimizes the input h_k of stage k, initialized from the previous round as G_{k-1}(h_{k-1}), and after
  every Adam step projects the deviation h_k - h_k^init onto the l1 ball of radius r_k. The output is the image of
  the round, over all restarts, with the lowest matching loss.
The budget (``iterations`` in the results) counts evaluations of the simulated update.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from giabench import checks
from giabench.attacks import labels as label_methods
from giabench.attacks.base import LABELS, Attack
from giabench.attacks.optimization import STEP_RANGE, TV_RANGE, cosine_distance, total_variation
from giabench.checks import Param
from giabench.contracts import Reconstruction
from giabench.errors import ConfigError, NotApplicable
from giabench.registry import attack
from giabench.search import Range


def project_l1(v: torch.Tensor, radius: float) -> torch.Tensor:
    """Euclidean projection of every row of ``v`` (flattened per sample) onto {||.||_1 <= radius} (Duchi et al.,
    ICML 2008): w = sign(v) max(|v| - t, 0) with the threshold t that makes ||w||_1 = radius."""
    flat = v.flatten(1)
    out = flat.clone()
    for i, row in enumerate(flat):
        if row.abs().sum() <= radius:
            continue
        u = row.abs().sort(descending=True).values
        css = u.cumsum(0)
        ks = torch.arange(1, u.numel() + 1, device=v.device, dtype=v.dtype)
        rho = int(torch.nonzero(u > (css - radius) / ks).max())
        t = (css[rho] - radius) / (rho + 1)
        out[i] = row.sign() * (row.abs() - t).clamp(min=0)
    return out.view_as(v)


def ramped_lr(fraction: float, lr: float, rampdown: float = 0.75, rampup: float = 0.05) -> float:
    """Cosine ramp-down over the last ``rampdown`` of the run and linear ramp-up over the first ``rampup``, the schedule
    GIFD inherits from latent projection (Karras et al., StyleGAN2, Appendix D)."""
    down = 0.5 - 0.5 * math.cos(min(1.0, (1 - fraction) / rampdown) * math.pi)
    return lr * down * min(1.0, fraction / rampup)


def kl_prior(z: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, s^2) || N(0, 1)) of each latent's entries, averaged over the batch (GGL's prior)."""
    mu, var = z.mean(dim=1), z.var(dim=1).clamp(min=1e-8)
    return (0.5 * (var + mu ** 2 - 1 - var.log())).mean()


class GenerativeAttack(Attack):
    """Shared set-up: the generator, the labels, and the matching loss."""

    family = "generative"
    needs = ("priors", "surrogate-data")
    assumes = "a generator trained on the client's kind of images (threat model D); labels known or inferred"
    #: the parameters every generative attack takes (each adds its own, and its meaning of ``restarts``)
    shared = {
        "generator": Param("G, the pretrained generator: dcgan-mnist, dcgan-patches, biggan-deep-128/256/512 or "
                           "checkpoint:PATH"),
        "tv": Param("alpha_TV, the weight of the total-variation prior in the matching loss", at_least=0),
        "labels": LABELS,
    }

    @classmethod
    def check(cls, params):
        super().check(params)
        from giabench.attacks.generators import BIGGAN, SHIPPED

        generator = params["generator"]
        if generator not in (*SHIPPED, *BIGGAN) and not generator.startswith("checkpoint:"):
            raise ConfigError(f"attack {cls.registered_name}: unknown generator {generator!r}; known: "
                              f"{', '.join((*SHIPPED, *BIGGAN))} or checkpoint:PATH", field="generator")

    def __init__(self, generator: str, labels: str, tv: float, restarts: int):
        self.generator, self.labels, self.tv, self.restarts = generator, labels, tv, restarts

    @classmethod
    def for_audit(cls, level, shape):
        raise NotApplicable(f"not in the battery: GIAS stands for the generative family ({cls.title} costs more "
                            "at the same budget)")

    def setup(self, view, simulate):
        from giabench.attacks.generators import load

        net = load(self.generator)
        if tuple(net.shape) != tuple(view.shape):
            raise NotApplicable(f"{self.registered_name}: generator {self.generator} makes {tuple(net.shape)} images, "
                                f"the data are {tuple(view.shape)}")
        device = view.model.mean.device
        net = net.to(device)
        y = label_methods.resolve(self.labels, view, simulate).to(device)
        obs = {k: v.to(device) for k, v in view.message.items()}

        def loss(x: torch.Tensor) -> torch.Tensor:
            return cosine_distance(simulate(x, y), obs) + self.tv * total_variation(x)

        return net, y, loss

    def seed_from(self, generator: torch.Generator) -> int:
        return int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))


@attack("gias")
class GIAS(GenerativeAttack):
    """Latent search, then per-image generator fine-tuning."""

    title = "GIAS"
    parameters = {
        **GenerativeAttack.shared,
        "latent_iterations": Param("stage 1: Adam steps of the latent search z, per restart", at_least=1),
        "finetune_iterations": Param("stage 2: Adam steps fine-tuning every image's generator copy w_j together",
                                     at_least=0),
        "lr": Param("stage 1: Adam step size in the latent space", above=0),
        "finetune_lr": Param("stage 2: Adam step size on the generator copies' weights", above=0),
        "restarts": Param("stage 1 searches from fresh latents; the lowest final loss goes on to stage 2", at_least=1),
    }

    @classmethod
    def for_audit(cls, level, shape):
        from giabench.attacks.generators import SHIPPED, shape_of

        found = [name for name in SHIPPED if shape_of(name) == tuple(shape)]
        if not found:
            made = ", ".join(f"{name}: {'x'.join(map(str, shape_of(name)))}" for name in SHIPPED)
            raise NotApplicable(f"no shipped generator makes {'x'.join(map(str, shape))} images (they make {made})")
        steps = {"quick": 50, "standard": 300, "thorough": 1000}[level]
        return {"generator": found[0], "latent_iterations": steps, "finetune_iterations": steps}

    @classmethod
    def search_space(cls, shape):
        return {"lr": STEP_RANGE, "finetune_lr": Range(1e-6, 1e-2, log=True), "tv": TV_RANGE}

    def __init__(self, *, generator: str = "dcgan-mnist", latent_iterations: int = 500, finetune_iterations: int = 500,
                 lr: float = 0.03, finetune_lr: float = 1e-4, tv: float = 1e-4, restarts: int = 1,
                 labels: str = "known"):
        super().__init__(generator, labels, tv, restarts)
        self.latent_iterations, self.finetune_iterations = latent_iterations, finetune_iterations
        self.lr, self.finetune_lr = lr, finetune_lr

    def planned_budget(self):
        return self.restarts * self.latent_iterations + self.finetune_iterations

    def reconstruct(self, view, simulate, generator, progress=None):
        net, y, loss = self.setup(view, simulate)
        best, trace = (math.inf, None), []
        for _ in range(self.restarts):
            z = net.sample_latent(view.batch_size, generator).to(y.device).requires_grad_(True)
            adam([z], lambda z=z: loss(net(z, y)), self.latent_iterations, self.lr, trace, progress)
            final = float(loss(net(z, y)).detach())
            if final < best[0]:
                best = (final, z.detach().clone())
        z, latent_loss = best[1], best[0]
        copies = [copy.deepcopy(net).requires_grad_(True) for _ in range(view.batch_size)]

        def images() -> torch.Tensor:
            return torch.cat([c(z[j:j + 1], y[j:j + 1]) for j, c in enumerate(copies)])

        adam([p for c in copies for p in c.parameters()], lambda: loss(images()), self.finetune_iterations,
             self.finetune_lr, trace, progress)
        with torch.no_grad():
            x = images()
        final = float(loss(x))
        return Reconstruction(x.cpu(), y.cpu(), self.planned_budget(), trace,
                              {"latent_loss": latent_loss, "objective": final})


@attack("ggl")
class GGL(GenerativeAttack):
    """CMA-ES over the latent with the KL prior; the update is only evaluated, never differentiated."""

    title = "GGL"
    parameters = {
        **GenerativeAttack.shared,
        "budget": Param("evaluations of the update in all, split evenly over the restarts; at least population"),
        "population": Param("CMA-ES candidates per generation", at_least=2),
        "sigma": Param("CMA-ES initial step size in the latent space", above=0),
        "kl": Param("lambda_KL, the weight of the KL prior of z's entries towards N(0, 1)", at_least=0),
        "restarts": Param("CMA-ES runs from fresh latents, sharing the budget; the lowest objective wins", at_least=1),
    }

    @classmethod
    def check(cls, params):
        super().check(params)
        checks.require(f"attack {cls.registered_name}", "budget", params["budget"],
                       params["budget"] >= params["population"], f">= population ({params['population']})")

    @classmethod
    def search_space(cls, shape):
        return {"sigma": Range(0.05, 2.0, log=True), "kl": Range(1e-3, 1.0, log=True)}

    def __init__(self, *, generator: str = "dcgan-mnist", budget: int = 1000, population: int = 20,
                 sigma: float = 0.5, kl: float = 0.1, tv: float = 0.0, restarts: int = 1, labels: str = "known"):
        super().__init__(generator, labels, tv, restarts)
        self.budget, self.population, self.sigma, self.kl = budget, population, sigma, kl

    def planned_budget(self):
        return self.budget

    def reconstruct(self, view, simulate, generator, progress=None):
        import cma

        net, y, loss = self.setup(view, simulate)
        shape = (view.batch_size, net.latent_dim)

        def objective(flat: np.ndarray) -> float:
            z = torch.as_tensor(flat, dtype=torch.float32, device=y.device).view(shape)
            return float(loss(net(z, y)) + self.kl * kl_prior(z))

        best, trace, spent = (math.inf, None), [], 0
        for restart in range(self.restarts):
            start = net.sample_latent(view.batch_size, generator).flatten().numpy().astype(np.float64)
            options = {"popsize": self.population, "maxfevals": self.budget, "seed": self.seed_from(generator),
                       "verbose": -9}
            strategy = cma.CMAEvolutionStrategy(start, self.sigma, options)
            while not strategy.stop() and spent + self.population <= self.budget * (restart + 1) // self.restarts:
                candidates = strategy.ask()
                values = [objective(c) for c in candidates]
                strategy.tell(candidates, values)
                spent += len(candidates)
                trace.append(min(values))
                if progress:
                    progress(len(candidates))
            if strategy.result.fbest < best[0]:
                best = (float(strategy.result.fbest), strategy.result.xbest)
        z = torch.as_tensor(best[1], dtype=torch.float32, device=y.device).view(shape)
        with torch.no_grad():
            x = net(z, y)
        return Reconstruction(x.cpu(), y.cpu(), spent, trace, {"objective": best[0]})


@attack("gifd")
class GIFD(GenerativeAttack):
    """Latent, then each intermediate feature in turn, l1-ball-constrained; the best round wins."""

    title = "GIFD"
    parameters = {
        **GenerativeAttack.shared,
        "iterations": Param("Adam steps per round (round 0: z; round k: stage k's input h_k), per restart",
                            at_least=1),
        "lr": Param("peak Adam step size, ramped up over the first 5 % of a round and down over its last 75 %",
                    above=0),
        "radii": Param("r_k, the l1 radius of round k's deviation h_k - h_k^init, one per stage k >= 1 (none: from "
                       "l1_ratio)"),
        "l1_ratio": Param("r_k where radii is none, relative to h_k's size: l1_ratio x the entries of one image's h_k",
                          above=0),
        "end_stage": Param("the last stage k whose input h_k is optimized (0: z only); negative: the output stage's"),
        "kl": Param("lambda_KL, the weight of GGL's KL prior on z in round 0", at_least=0),
        "restarts": Param("runs from fresh latents; the round of lowest matching loss over all runs wins", at_least=1),
    }

    @classmethod
    def check(cls, params):
        super().check(params)
        radii = params["radii"]
        ok = radii is None or (isinstance(radii, list) and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < math.inf for r in radii))
        checks.require(f"attack {cls.registered_name}", "radii", radii, ok,
                       "a list of positive numbers, one per feature stage")

    @classmethod
    def search_space(cls, shape):
        return {"lr": STEP_RANGE, "tv": TV_RANGE}

    def __init__(self, *, generator: str = "dcgan-mnist", iterations: int = 200, lr: float = 0.1,
                 radii: list | None = None, l1_ratio: float = 0.05, end_stage: int = -1, kl: float = 0.0,
                 tv: float = 1e-4, restarts: int = 1, labels: str = "known"):
        super().__init__(generator, labels, tv, restarts)
        self.iterations, self.lr, self.radii, self.l1_ratio = iterations, lr, radii, l1_ratio
        self.end_stage, self.kl = end_stage, kl

    def planned_budget(self):
        return None  # iterations per stage; the number of stages depends on the generator

    def stages(self, net) -> int:
        """The last stage whose input is optimized (default: the input of the output stage)."""
        last = len(net.stages) - 1
        end = last if self.end_stage < 0 else self.end_stage
        if not 0 <= end <= last:
            raise ConfigError(f"attack gifd: end_stage must be in 0..{last} for generator {self.generator}")
        return end

    def radius(self, k: int, h: torch.Tensor) -> float:
        if self.radii is not None:
            if len(self.radii) < k:
                raise ConfigError(f"attack gifd: radii has {len(self.radii)} entries, stage {k} needs one")
            return float(self.radii[k - 1])
        return self.l1_ratio * h[0].numel()

    def reconstruct(self, view, simulate, generator, progress=None):
        net, y, loss = self.setup(view, simulate)
        end = self.stages(net)
        best = (math.inf, None, -1)
        trace, stage_losses = [], []
        for _ in range(self.restarts):
            z = net.sample_latent(view.batch_size, generator).to(y.device)
            norm = z.norm(dim=1, keepdim=True)
            z = self._optimize(lambda v: loss(net(v, y)) + self.kl * kl_prior(v), z, trace, progress,
                               lambda v, norm=norm: v * norm / v.norm(dim=1, keepdim=True))
            h, cond = z, net.condition(y, z)
            losses = []
            for k in range(end + 1):
                if k > 0:
                    with torch.no_grad():
                        start = net.run_stage(k - 1, h, cond)
                    r = self.radius(k, start)
                    h = self._optimize(lambda v, k=k, c=cond: loss(net.decode(v, k, c)), start, trace, progress,
                                       lambda v, s=start, r=r: s + project_l1(v - s, r))
                with torch.no_grad():
                    x = net.decode(h, k, cond)
                value = float(loss(x))
                losses.append(value)
                if value < best[0]:
                    best = (value, x.clone(), k)
            stage_losses.append(losses)
        return Reconstruction(best[1].cpu(), y.cpu(), self.restarts * (end + 1) * self.iterations, trace,
                              {"objective": best[0], "stage": best[2], "stage_losses": stage_losses})

    def _optimize(self, objective, start: torch.Tensor, trace, progress, project) -> torch.Tensor:
        v = start.detach().clone().requires_grad_(True)
        adam([v], lambda: objective(v), self.iterations, self.lr, trace, progress,
             schedule=lambda step: ramped_lr(step / self.iterations, self.lr), project=lambda: v.copy_(project(v)))
        return v.detach()


def adam(leaves: list[torch.Tensor], objective, iterations: int, lr: float, trace: list, progress=None,
         schedule=None, project=None) -> None:
    """``iterations`` Adam steps on ``objective()``; ``schedule(step)`` sets the step size before each step,
    ``project()`` runs in place without grad after it; the objective is sampled every ten steps into ``trace``."""
    optimizer = torch.optim.Adam(leaves, lr=lr)
    for step in range(iterations):
        if schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
        value = objective()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        if project is not None:
            with torch.no_grad():
                project()
        if step % 10 == 0:
            trace.append(float(value.detach()))
        if progress:
            progress(1)
