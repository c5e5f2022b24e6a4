"""Optimization attacks on text: dummy word embeddings whose simulated update matches the observed one, then mapped
to the nearest vocabulary tokens.

Both attacks optimize X' (B x n x d), the word-embedding rows a text model of ``giabench.text_models`` takes in place of
token ids (it adds the positions itself), with Adam through ``simulate`` (so clipping, masks and local steps are in the
objective). The word-embedding table's own gradient is left out of the distance: the dummy inputs do not go through it.
Tokens are read off by cosine similarity, t_{j,i} = argmax_v cos(x'_{j,i}, E[v]). The sequence length is the data's.
"""

from __future__ import annotations

import math

import torch

from giabench.attacks import labels as label_methods
from giabench.attacks.base import LABELS, Attack
from giabench.attacks.text_prior import language_model
from giabench.checks import Param
from giabench.contracts import Reconstruction
from giabench.errors import ConfigError, NotApplicable
from giabench.registry import attack
from giabench.search import Range


def tag_distance(sim: dict, obs: dict, alpha: float) -> torch.Tensor:
    """TAG's distance (Deng et al., Eq. 5): sum_p ||g'_p - g_p||_2^2 + alpha ||g'_p - g_p||_1, with the uniform alpha
    of the reimplementation behind LAMP's and DAGER's TAG figures (0.01)."""
    return sum(((sim[k] - obs[k]) ** 2).sum() + alpha * (sim[k] - obs[k]).abs().sum() for k in obs)


def nearest_tokens(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """argmax_v cos(x_{j,i}, E[v]) for every row of ``x`` (B x n x d)."""
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (unit @ (table / table.norm(dim=-1, keepdim=True).clamp_min(1e-12)).T).argmax(dim=-1)


class EmbeddingAttack(Attack):
    """An attack that optimizes word embeddings through a transformer of ``giabench.text_models``."""

    modalities = ("text",)

    def applies(self, model, shape, protocol, batch_size):
        return None if hasattr(model, "token_embedding") else \
            f"{self.title} needs a transformer of giabench.text_models or giabench.hub (one that takes word embeddings)"

    def observed(self, view, simulate) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The embedding table E, the dummy batch's labels and the observed message without E's gradient (the
        dummy inputs do not go through it); NotApplicable for a model that is not a text transformer."""
        net = getattr(view.model, "net", None)
        reason = self.applies(net, view.shape, view.protocol.name, view.batch_size)
        if reason:
            raise NotApplicable(reason)
        weight = net.token_embedding.weight
        embedding = next(f"net.{name}" for name, p in net.named_parameters() if p is weight)
        table = weight.detach()
        y = label_methods.resolve(self.labels, view, simulate).to(table.device)
        return table, y, {k: v.to(table.device) for k, v in view.message.items() if k != embedding}


@attack("tag")
class TAG(EmbeddingAttack):
    """TAG, Gradient Attack on Transformer-based Language Models (Deng, Wang, Li, Wang, Guo, Tao, Ding, Findings of
    EMNLP 2021): Adam on dummy word embeddings X' minimizing sum_p ||g'_p - g_p||^2 + alpha ||g'_p - g_p||_1 (Eq. 5),
    started from N(0, s^2) with s the embedding table's standard deviation (the paper's N(0, 1) in the model's
    embedding scale). The paper optimizes the labels jointly; LAMP's and DAGER's reruns, whose figures we compare
    with, give it the true labels (``labels: known``). One iteration is one gradient of the distance."""

    title = "TAG"
    assumes = "the client's labels (known, as in LAMP's and DAGER's reruns, or inferred)"
    parameters = {
        "iterations": Param("Adam steps, one gradient of the distance each (LAMP's rerun: 2500)", at_least=1),
        "lr": Param("Adam step size, in units of the embedding table's standard deviation (LAMP's rerun: 0.1 on "
                    "N(0, 1) inputs)", above=0),
        "alpha": Param("weight of the L1 term (LAMP's rerun: 0.01)", at_least=0),
        "labels": LABELS,
    }

    @classmethod
    def for_audit(cls, level, shape):
        return {"iterations": {"quick": 100, "standard": 500, "thorough": 2500}[level]}

    @classmethod
    def search_space(cls, shape):
        return {"lr": Range(0.003, 0.3, log=True), "alpha": Range(1e-4, 1.0, log=True)}

    def __init__(self, *, iterations: int = 2500, lr: float = 0.1, alpha: float = 0.01, labels: str = "known"):
        self.iterations, self.lr, self.alpha, self.labels = iterations, lr, alpha, labels

    def reconstruct(self, view, simulate, generator, progress=None):
        table, y, obs = self.observed(view, simulate)
        length, width = view.shape[0], table.shape[1]
        start = torch.randn((view.batch_size, length, width), generator=generator) * float(table.std())
        x = start.to(table.device).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=self.lr * float(table.std()))
        best, trace = (math.inf, x.detach().clone()), []
        for _ in range(self.iterations):
            optimizer.zero_grad()
            loss = tag_distance({k: v for k, v in simulate(x, y).items() if k in obs}, obs, self.alpha)
            if not torch.isfinite(loss):
                break
            if loss.item() < best[0]:
                best = (loss.item(), x.detach().clone())
            loss.backward()
            optimizer.step()
            trace.append(loss.item())
            if progress:
                progress(1)
        tokens = nearest_tokens(best[1], table)
        return Reconstruction(tokens.cpu(), y.cpu(), len(trace), trace, {"objective": best[0]})


def cosine_per_tensor(sim: dict, obs: dict) -> torch.Tensor:
    """LAMP_Cos's distance: the mean over tensors p of 1 - <g'_p, g_p> / (||g'_p|| ||g_p||)."""
    terms = [1 - (sim[k] * obs[k]).sum() / (sim[k].norm() * obs[k].norm() + 1e-12) for k in obs]
    return sum(terms) / len(terms)


def moves(length: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` position orders of a sequence (count x length): the identity, then LAMP's four moves in turn on
    uniformly drawn positions: swap two tokens, move one token, move a span, and move a prefix behind the rest."""
    orders = [torch.arange(length)]
    for k in range(1, count):
        i, j, p = (int(v) for v in torch.randint(length, (3,), generator=generator))
        order = list(range(length))
        kind = k % 4
        if kind == 0:
            order[i], order[j] = order[j], order[i]
        elif kind == 1:
            token = order.pop(i)
            order.insert(j, token)
        elif kind == 2:
            start, end = min(i, j), max(i, j) + 1
            span, rest = order[start:end], order[:start] + order[end:]
            at = p % (len(rest) + 1)
            order = rest[:at] + span + rest[at:]
        else:
            order = order[i:] + order[:i]
        orders.append(torch.tensor(order))
    return torch.stack(orders)


@attack("lamp")
class LAMP(EmbeddingAttack):
    """LAMP, Extracting Text from Gradients with Language Model Priors (Balunovic, Dimitrov, Jovanovic, Vechev,
    NeurIPS 2022). Continuous steps: Adam on word embeddings X' minimizing
        L_rec(X') + alpha_reg ((1/Bn) sum_{j,i} ||x'_{j,i}|| - nu)^2,
    L_rec the per-tensor cosine distance (LAMP_Cos; ``distance: tag`` for LAMP_L1+L2, TAG's distance) and nu the mean
    norm of the embedding table's rows, started from the best of ``init_candidates`` draws of N(0, s^2) rescaled to
    norm nu, the step size decayed x ``lr_decay`` every 50 steps. Discrete steps, every ``every`` iterations after the
    first ``burn_in`` share: for each sequence in turn, ``candidates`` reorderings of its rows (the identity, swaps,
    token moves, span moves, prefix moves) are scored by
        L_rec(X'_pi) + alpha_lm L_lm(t_pi),
    L_lm the batch's mean next-token cross-entropy under a language model (``giabench.attacks.text_prior``, trained on
    the surrogate data of threat model D; ``alpha_lm: 0`` needs none), and the best is kept. The embeddings of the
    lowest continuous loss are mapped to the nearest tokens by cosine. Budget: gradient evaluations, the discrete
    candidates included. Defaults are the paper's LAMP_Cos script (2000 steps, lr 0.01 on BERT's embeddings, whose
    standard deviation is about 0.05: 0.2 in units of it)."""

    title = "LAMP"
    assumes = "the client's labels and, for its language-model prior, surrogate text of the client's distribution"
    parameters = {
        "iterations": Param("continuous Adam steps", at_least=1),
        "lr": Param("Adam step size, in units of the embedding table's standard deviation", above=0),
        "lr_decay": Param("step-size factor every 50 steps", above=0, at_most=1),
        "distance": Param("cos (LAMP_Cos, per-tensor cosine) or tag (LAMP_L1+L2: L2 + 0.01 L1)"),
        "alpha_reg": Param("weight of the embedding-norm regularizer", at_least=0),
        "alpha_lm": Param("weight of the language-model perplexity in discrete steps (0: no prior)", at_least=0),
        "every": Param("iterations between discrete steps", at_least=1),
        "burn_in": Param("share of the iterations before the first discrete step", at_least=0, at_most=1),
        "candidates": Param("reorderings scored per sequence in a discrete step, the identity included", at_least=1),
        "init_candidates": Param("random starts scored before the best is optimized", at_least=1),
        "labels": LABELS,
    }

    @classmethod
    def check(cls, params):
        super().check(params)
        if params["distance"] not in ("cos", "tag"):
            raise ConfigError(f"attack lamp: distance must be cos or tag, got {params['distance']!r}",
                              field="distance")

    @classmethod
    def for_audit(cls, level, shape):
        budgets = {"quick": (100, 20, 20), "standard": (500, 100, 50), "thorough": (2000, 500, 200)}[level]
        return dict(zip(("iterations", "init_candidates", "candidates"), budgets, strict=True))

    @classmethod
    def search_space(cls, shape):
        return {"lr": Range(0.02, 2.0, log=True), "alpha_reg": Range(0.01, 10.0, log=True)}

    def __init__(self, *, iterations: int = 2000, lr: float = 0.2, lr_decay: float = 0.89, distance: str = "cos",
                 alpha_reg: float = 1.0, alpha_lm: float = 0.2, every: int = 75, burn_in: float = 0.1,
                 candidates: int = 200, init_candidates: int = 500, labels: str = "known"):
        self.iterations, self.lr, self.lr_decay, self.distance = iterations, lr, lr_decay, distance
        self.alpha_reg, self.alpha_lm, self.every, self.burn_in = alpha_reg, alpha_lm, every, burn_in
        self.candidates, self.init_candidates, self.labels = candidates, init_candidates, labels

    def parameter_needs(self):
        return super().parameter_needs() | ({"surrogate-data"} if self.alpha_lm > 0 else set())

    def reconstruct(self, view, simulate, generator, progress=None):
        table, y, obs = self.observed(view, simulate)
        prior = language_model(view.surrogate, view.shape[1]).to(table.device) if self.alpha_lm > 0 else None
        nu, scale = float(table.norm(dim=-1).mean()), float(table.std())
        spent = 0

        def reconstruction(x):
            sim = {k: v for k, v in simulate(x, y).items() if k in obs}
            return cosine_per_tensor(sim, obs) if self.distance == "cos" else tag_distance(sim, obs, 0.01)

        starts = [torch.randn((view.batch_size, view.shape[0], table.shape[1]), generator=generator) * scale
                  for _ in range(self.init_candidates)]
        scores = [float(reconstruction(s.to(table.device))) for s in starts]
        spent += len(starts)
        x = starts[min(range(len(starts)), key=scores.__getitem__)].to(table.device)
        x = (x * nu / x.norm(dim=-1, keepdim=True)).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=self.lr * scale)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, 50, gamma=self.lr_decay)
        best, trace = (math.inf, x.detach().clone()), []
        for step in range(self.iterations):
            optimizer.zero_grad()
            loss = reconstruction(x) + self.alpha_reg * (x.norm(dim=-1).mean() - nu) ** 2
            spent += 1
            if not torch.isfinite(loss):
                break
            if loss.item() < best[0]:
                best = (loss.item(), x.detach().clone())
            loss.backward()
            optimizer.step()
            schedule.step()
            trace.append(loss.item())
            if step >= self.burn_in * self.iterations and step % self.every == 1:
                moved = self._discrete(x.detach(), reconstruction, prior, table, generator)
                with torch.no_grad():
                    x.copy_(moved)
                spent += view.batch_size * (self.candidates - 1)
            if progress:
                progress(1)
        tokens = nearest_tokens(best[1], table)
        return Reconstruction(tokens.cpu(), y.cpu(), spent, trace, {"objective": best[0]})

    def _discrete(self, x, reconstruction, prior, table, generator) -> torch.Tensor:
        """One discrete step: each sequence in turn takes its best-scoring reordering."""
        tokens = nearest_tokens(x, table)
        for j in range(x.shape[0]):
            orders = moves(x.shape[1], self.candidates, generator).to(x.device)
            best_score, best_order = math.inf, orders[0]
            for order in orders:
                trial = x.clone()
                trial[j] = x[j, order]
                score = float(reconstruction(trial))
                if prior is not None:
                    ids = tokens.clone()
                    ids[j] = tokens[j, order]
                    score += self.alpha_lm * float(prior.perplexity_loss(ids).mean())
                if score < best_score:
                    best_score, best_order = score, order
            x = x.clone()
            x[j] = x[j, best_order]
            tokens[j] = tokens[j, best_order]
        return x
