"""SPEAR (Dimitrov, Baader, Müller, Vechev; NeurIPS 2024, "SPEAR: Exact Gradient Inversion of Batches in Federated
Learning"): exact recovery of a whole batch from the gradient of a linear layer Z = X W^T + b followed by ReLU.

With D = dL/dZ (m x B, column k the output gradient of sample k) the weight gradient is
    G = dL/dW = D X^T,   rank G <= B                                                           (low rank)
so a truncated SVD G = L R (L = U_B S_B, m x B; R = V_B^T, B x n) and some Q in GL(B) give
    D = L Q,   X^T = Q^{-1} R                                                                   (disaggregation)
ReLU makes each column of D sparse: row i of D is zero where unit i is inactive for sample k (about half of them).
Rows of L for which column k of D vanishes lie in the hyperplane q_k^T-orthogonal, so B-1 of them sampled at random
span it with probability about 2^-(B-1) per sample, and the kernel of that (B-1) x B submatrix L_A is q_k up to scale:
    L_A q = 0,  ||q|| = 1                                                                       (sampling)
A proposal is kept when L q has tau of the way more zeros than the chunk's median proposal (a wrong proposal has only
the B-1 zeros it was built on; filtering). An entry counts as zero below 1e-6 of its column's largest or three times
the noise std read off the discarded singular values (DP noise, float32 rounding); when the B-th singular value sits
inside the noise bulk (below 2 sigma (sqrt m + sqrt n)) nothing is sampled. The B kept directions are chosen
greedily, sparsest first, keeping Q invertible, then improved by swaps against the ReLU consistency of the result:
with X from Q, unit i of sample k must be inactive (x_k^T w_i + b_i <= 0) exactly where D_ik = 0 (greedy selection,
two stages). The column scales s come from the bias gradient,
    dL/db = D 1 = L Q diag(s) 1   (least squares for s),                                       (scale recovery)
and X^T = (Q diag(s))^{-1} R, returned when at least 90 % of the pairs are ReLU-consistent (a wrong choice scores
about 60 %; those slots stay unfilled). The sampling cost grows as 2^B: the paper reaches B ~ 25 on a GPU.
Which rows are drawn (``sampler``): ``uniform`` over the live units, as the paper (the default); ``low-norm``
(giabench's) cycles chunk by chunk through pools of the 25, 35, 50, 70 and 100 % rows of G with the smallest norms.
Row i of G is sum_k D_ik x_k^T over the samples unit i is active for, so a small ||G_i|| = ||L_i|| marks a unit active
for few samples, and since one draw hits sample k with probability C(z_k, B-1) / C(m, B-1) (z_k of the m rows
inactive for k), a product over the drawn rows, drawing among such units raises it by orders of magnitude; the wider
pools keep every sample's inactive units reachable (``benchmarks/spear_sampling.py`` computes both samplers' expected
draws from a batch's true activation pattern). Measured (``giabench reproduce spear``, MLP 256 on mnist-5k, 8.4 M
draws): at B = 25 low-norm recovered 2 of 5 batches exactly (and 23 of 25 images of a third) where uniform recovered
none; it also keeps many more false proposals (hundreds to tens of thousands), which slows the draws and once, at
B = 16, let the selection take a wrong direction (15 of 16 exact, where uniform is exact).
Conditions (checked, else not applicable): the layer is the model's first, a linear layer with a bias followed by
ReLU, and it has at least B live units (the rank of G is B when the inputs are linearly independent).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from giabench.attacks import labels as label_methods
from giabench.attacks.analytic import fill_slots, first_layer, first_linear, layer_gradients, unless_linear_first
from giabench.attacks.base import LABELS, Attack
from giabench.checks import Param
from giabench.contracts import Reconstruction
from giabench.errors import NotApplicable
from giabench.registry import attack

MIN_CONSISTENCY = 0.9  # a wrong choice scores about 0.6 (chance); one wrong direction of 16 still scores 0.98
POOLS = (0.25, 0.35, 0.5, 0.7, 1.0)  # the low-norm sampler's pools: shares of the live rows, smallest norms first
SAMPLERS = ("uniform", "low-norm")
SPAN_GAP = 1e-3  # a direction closer than this to the span of the chosen ones would leave Q ill-conditioned
PIVOT_TOL = 1e-9  # a (B-1)-row submatrix whose smallest LU pivot is below this share of its largest is rank deficient


def log2_expected_samples(batch_size: int) -> float:
    """log2 of the submatrices drawn until every direction has been found once when each unit is inactive for half
    of the samples: each direction is drawn with probability 2^-(B-1), so a coupon collector's H_B 2^(B-1)
    (Lemma 5.2). In log2, (B - 1) + log2 H_B, which a float holds at any batch size (2^(B-1) overflows past
    B = 1025)."""
    return batch_size - 1 + math.log2(sum(1 / k for k in range(1, batch_size + 1)))


def relu_follows(model: nn.Module, layer: nn.Module, shape: tuple[int, ...], generator: torch.Generator) -> bool:
    """Whether ``layer``'s output reaches the loss through a ReLU: on a random batch the output gradient is exactly zero
    wherever the output is negative, and not zero everywhere it is positive."""
    outputs = []
    handle = layer.register_forward_hook(lambda _m, _i, out: outputs.append(out) or out.retain_grad())
    try:
        x = torch.randn(4, *shape, generator=generator).to(next(model.parameters()).device)
        logits = model(x)
        logits.backward(torch.randn(logits.shape, generator=generator).to(logits.device))
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    z, dz = outputs[0].detach(), outputs[0].grad
    return bool((dz[z < 0] == 0).all() and (dz[z > 0] != 0).float().mean() > 0.5)


def kernel_directions(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit kernel vectors of a batch of (B-1) x B matrices A (q = (-A'^{-1} a, 1) normalized, with A = [A' | a]), and
    which matrices have full rank B-1 (the pivots of A' clear of zero): a rank-deficient one has a kernel of two or
    more directions, and its vector is an arbitrary mixture of them."""
    lu, pivots, _ = torch.linalg.lu_factor_ex(rows[:, :, :-1])
    pivot = lu.diagonal(dim1=1, dim2=2).abs()
    full_rank = pivot.amin(dim=1) > PIVOT_TOL * pivot.amax(dim=1)
    lu[~full_rank] = torch.eye(rows.shape[1], dtype=rows.dtype)  # any invertible stand-in; those rows are dropped
    head = torch.linalg.lu_solve(lu, pivots, -rows[:, :, -1:]).squeeze(-1)
    q = torch.cat([head, torch.ones_like(head[:, :1])], dim=1)
    return q / q.norm(dim=1, keepdim=True), full_rank


def zeros_of(values: torch.Tensor, tol: float, floor: float) -> torch.Tensor:
    """Which entries of each column of L Q count as zero: below ``tol`` times the column's largest or ``floor``."""
    return values.abs() <= torch.clamp(tol * values.abs().amax(dim=0, keepdim=True), min=floor)


def zero_counts(basis: torch.Tensor, directions: torch.Tensor, tol: float, floor: float) -> torch.Tensor:
    """For each direction q (columns), how many entries of L q are zero (``zeros_of``)."""
    return zeros_of(basis @ directions, tol, floor).sum(dim=0)


def noise_level(singular: torch.Tensor, rank: int, columns: int) -> float:
    """The per-entry std of noise on G (a DP mechanism's, or float32 rounding) from the singular values past the rank:
    noise of std sigma on an m x n matrix leaves sum_{i > B} s_i^2 ~ sigma^2 (m - B)(n - B); it reaches L q with the
    same std for a unit q, which sets the floor below which an entry of L q counts as zero."""
    rows = singular.numel()
    tail = singular[rank:]
    dof = (rows - rank) * (columns - rank)
    return float((tail.square().sum() / dof).sqrt()) if tail.numel() and dof > 0 else 0.0


def refine(basis: torch.Tensor, directions: torch.Tensor, floor: float, loose: float = 1e-4) -> torch.Tensor:
    """Each direction re-solved on every row it (nearly) zeroes, not only the B-1 it was sampled from: the last right
    singular vector of L restricted to the rows where |L q| <= ``loose`` max |L q| or ``floor`` (the other rows set
    to zero), for all directions at once (our addition: the float32 message leaves a direction from an
    ill-conditioned submatrix off by up to 1e-5, hiding some of its zeros). Run twice, loose then at the zero
    tolerance, so that small non-zero entries (down to 1e-4 of the largest on a 1000-unit layer) are not fitted as
    zeros. A direction that zeroes fewer than B-1 rows is kept as it is."""
    values = (basis @ directions).abs()
    zero = values <= torch.clamp(loose * values.amax(dim=0), min=floor)
    masked = basis[None] * zero.T[:, :, None].to(basis.dtype)  # rows that are not (nearly) zero set to 0
    null = torch.linalg.svd(masked, full_matrices=False).Vh[:, -1].T
    enough = zero.sum(dim=0) >= basis.shape[1] - 1
    return torch.where(enough, null, directions)


class Candidates:
    """Distinct kept directions (unit, sign fixed), with their zero counts and how often sampling found each."""

    def __init__(self, size: int):
        self.directions = torch.empty(size, 0, dtype=torch.float64)
        self.zeros = torch.empty(0, dtype=torch.long)
        self.hits = torch.empty(0, dtype=torch.long)

    def add(self, directions: torch.Tensor, zeros: torch.Tensor) -> None:
        """Columns of ``directions`` within 1e-6 of a kept one (or of an earlier column) count as its hits; the others
        are kept, all compared at once."""
        signs = torch.sign(directions[directions.abs().argmax(dim=0), torch.arange(directions.shape[1])])
        directions = directions * signs
        known = (self.directions.T @ directions).abs() > 1 - 1e-6  # kept x new
        self.hits += known.long().sum(dim=1)
        fresh = ~known.any(dim=0)
        if not fresh.any():
            return
        directions, zeros = directions[:, fresh], zeros[fresh]
        same = (directions.T @ directions).abs() > 1 - 1e-6  # new x new: the first of each group is kept
        first = same.long().argmax(dim=1)
        lead = first == torch.arange(len(first))
        self.directions = torch.cat([self.directions, directions[:, lead]], dim=1)
        self.zeros = torch.cat([self.zeros, zeros[lead]])
        self.hits = torch.cat([self.hits, torch.bincount(first, minlength=len(first))[lead]])

    def __len__(self) -> int:
        return int(self.hits.numel())

    def order(self) -> torch.Tensor:
        """Sparsest first, the most often found breaking ties."""
        return torch.tensor(sorted(range(len(self)), key=lambda i: (-int(self.zeros[i]), -int(self.hits[i]))),
                            dtype=torch.long)


class Assembly:
    """The layer's side of turning B chosen directions (the columns of q) into inputs, and of checking them against
    ReLU."""

    def __init__(self, basis, rows, bias_grad, weight, bias, tol, floor):
        self.basis, self.rows, self.bias_grad, self.weight, self.bias = basis, rows, bias_grad, weight, bias
        self.tol, self.floor = tol, floor

    def inputs(self, q: torch.Tensor) -> torch.Tensor:
        """X (B x n) from the directions q, each scaled by the bias gradient's least squares."""
        scales = torch.linalg.lstsq(self.basis @ q, self.bias_grad[:, None]).solution.squeeze(1)
        return torch.linalg.solve(q * scales, self.rows)

    def consistency(self, q: torch.Tensor) -> float:
        """The share of (unit, sample) pairs where D_ik = 0 exactly when the recovered x_k leaves unit i inactive,
        among pairs whose pre-activation z_ik is clear of zero (|z| > 1e-3 max |z|: the float32 message moves x)."""
        zero = zeros_of(self.basis @ q, self.tol, self.floor)
        z = (self.inputs(q) @ self.weight.T + self.bias).T
        clear = z.abs() > 1e-3 * z.abs().amax()
        return float((zero == (z <= 0))[clear].double().mean())


def independent(directions: torch.Tensor, chosen: list[int], candidate: int) -> bool:
    """Whether ``candidate`` keeps the chosen directions well conditioned (its distance to their span above
    ``SPAN_GAP``)."""
    if not chosen:
        return True
    span, _ = torch.linalg.qr(directions[:, chosen])
    q = directions[:, candidate]
    return float((q - span @ (span.T @ q)).norm()) > SPAN_GAP


def greedy(assembly: Assembly, found: Candidates, rank: int, swaps: int) -> tuple[list[int], float]:
    """Stage 1: sparsest directions first, skipping dependent ones. Stage 2: swap a chosen direction for an unused one
    while the ReLU consistency improves (at most ``swaps`` unused candidates tried per position)."""
    directions, order = found.directions, found.order()
    chosen: list[int] = []
    span = torch.empty(directions.shape[0], 0, dtype=directions.dtype)  # orthonormal basis of the chosen directions
    for index in order.tolist():
        if len(chosen) == rank:
            break
        rest = directions[:, index] - span @ (span.T @ directions[:, index])
        if float(rest.norm()) > SPAN_GAP:  # as ``independent``, one projection per candidate
            chosen.append(index)
            span = torch.cat([span, (rest / rest.norm())[:, None]], dim=1)
    if len(chosen) < rank:
        return chosen, 0.0
    score = assembly.consistency(directions[:, chosen])
    spare = [i for i in order.tolist() if i not in chosen][:swaps]
    improved = score < 1.0
    while improved:
        improved = False
        for position in range(rank):
            for index in spare:
                others = chosen[:position] + chosen[position + 1:]
                if not independent(directions, others, index):
                    continue
                trial = others[:position] + [index] + others[position:]
                trial_score = assembly.consistency(directions[:, trial])
                if trial_score > score:
                    spare[spare.index(index)] = chosen[position]
                    chosen, score, improved = trial, trial_score, True
                    break
    return chosen, score


@attack("spear")
class Spear(Attack):
    """SPEAR (Dimitrov et al., NeurIPS 2024): G = L R, D = L Q, X^T = Q^{-1} R with the columns of Q found as kernels
    of random (B-1)-row submatrices of L that make L q sparse; scales from dL/db = L Q 1."""

    family = "analytic"
    title = "SPEAR"
    budget_unit = "sampled submatrices"
    assumes = ("the first layer is linear with a bias and followed by ReLU, with at least B live units; an honest "
               "server; labels inferred (LLG) for the label score")
    parameters = {
        "samples": Param("budget of random (B-1)-row submatrices L_A of L drawn for kernel directions q", at_least=1),
        "chunk": Param("submatrices drawn per batch (the filter compares each proposal to its chunk's median)",
                       at_least=1),
        "tau": Param("tau: keep a proposal q whose zero count in L q lies tau of the way from its chunk's median to m",
                     above=0, below=1),
        "rank_tol": Param("singular values of G above rank_tol times the largest count toward its rank", above=0,
                          below=1),
        "zero_tol": Param("an entry of L q counts as zero below zero_tol times its column's largest (or the noise "
                          "floor)", above=0, below=1),
        "swaps": Param("unused candidates tried per position in the greedy selection's swap stage", at_least=0),
        "sampler": Param("which B-1 rows are drawn: uniform (over the live units, the paper's) or low-norm (cycling "
                         "through pools of the rows of G with the smallest norms)", choices=SAMPLERS),
        "labels": LABELS,
    }

    @classmethod
    def for_audit(cls, level, shape):
        return {"samples": {"quick": 2**20, "standard": 2**22, "thorough": 2**24}[level]}

    def applies(self, model, shape, protocol, batch_size):
        if reason := unless_linear_first(model):
            return reason
        if batch_size < 2:
            return "a batch of one is the linear-layer inversion's case (fc-invert), exact without sampling"
        _, first = first_layer(model)
        if reason := self.too_large(first.out_features, batch_size):
            return reason
        if not relu_follows(model, first, shape, torch.Generator().manual_seed(0)):
            return "the first layer is not followed by ReLU (its output gradient is not zero where it is negative)"
        return None

    def __init__(self, *, samples: int = 2**22, chunk: int = 4096, tau: float = 0.1, rank_tol: float = 1e-5,
                 zero_tol: float = 1e-6, swaps: int = 32, sampler: str = "uniform", labels: str = "inferred:llg"):
        self.samples, self.chunk, self.tau, self.rank_tol, self.zero_tol = samples, chunk, tau, rank_tol, zero_tol
        self.swaps, self.sampler, self.labels = swaps, sampler, labels

    def planned_budget(self):
        return self.samples

    def too_large(self, units: int, batch_size: int) -> str | None:
        """Why a batch of ``batch_size`` is beyond a first layer of ``units`` units (rank G <= units) or beyond the
        sampling budget (None when neither)."""
        if units < batch_size:
            return f"the first layer has {units} units, fewer than the batch of {batch_size}"
        needed = log2_expected_samples(batch_size)
        if needed <= math.log2(8 * self.samples):
            return None
        exponent = math.floor(needed * math.log10(2))  # written as m e+k: 2^(B-1) H_B overflows a float past B = 1025
        mantissa = 10 ** (needed * math.log10(2) - exponent)
        return (f"at B={batch_size} sampling needs about {mantissa:.1f}e+{exponent:02d} submatrices (2^(B-1) H_B), "
                f"beyond 8 times the budget of {self.samples:.1e}")

    def pools(self, basis: torch.Tensor, rank: int) -> list[torch.Tensor]:
        """The row pools chunks draw from in turn: all live rows (uniform), or the smallest-norm shares of them."""
        if self.sampler == "uniform":
            return [torch.arange(basis.shape[0])]
        order = basis.norm(dim=1).argsort()
        return [order[: max(rank - 1, math.ceil(share * len(order)))] for share in POOLS]

    def reconstruct(self, view, simulate, generator, progress=None):
        name = first_linear(view.model)
        layer = view.model.get_submodule(name)
        if reason := self.too_large(layer.out_features, view.batch_size):
            raise NotApplicable(f"spear: {reason}")
        weight_grad, bias_grad = layer_gradients(view.message, name, "spear")
        live = weight_grad.abs().amax(dim=1) > 0
        u, s, vh = torch.linalg.svd(weight_grad[live], full_matrices=False)
        rank = min(view.batch_size, int((s > self.rank_tol * s[0]).sum()) if s.numel() and s[0] > 0 else 0)
        if rank < 2:
            raise NotApplicable(f"spear: the weight gradient of {name} has rank {rank} (B=1 is fc-invert's case)")
        basis, rows = u[:, :rank] * s[:rank], vh[:rank]
        width = basis.shape[0]
        sigma = noise_level(s, rank, weight_grad.shape[1])
        floor = 3 * sigma
        # noise of std sigma spreads singular values up to sigma (sqrt m + sqrt n): a B-th one inside that bulk is lost
        drowned = float(s[rank - 1]) <= 2 * sigma * (width ** 0.5 + weight_grad.shape[1] ** 0.5)
        found, drawn, chosen, score = Candidates(rank), 0, [], 0.0
        assembly = Assembly(basis, rows, bias_grad[live], layer.weight.detach().double().cpu()[live],
                            layer.bias.detach().double().cpu()[live], self.zero_tol, floor)
        pools = self.pools(basis, rank)
        while drawn < self.samples and not drowned:
            count = min(self.chunk, self.samples - drawn)
            pool = pools[(drawn // self.chunk) % len(pools)]
            picks = pool[torch.rand(count, len(pool), generator=generator).topk(rank - 1, dim=1).indices]
            directions, full_rank = kernel_directions(basis[picks])
            directions = directions.T
            zeros = zero_counts(basis, directions, self.zero_tol, floor)
            typical = float(zeros.median())  # B-1 without noise; near m when noise hides the sparsity
            keep = (zeros >= typical + self.tau * (width - typical)) & full_rank
            drawn += count
            if keep.any():
                before = len(found)
                kept = refine(basis, refine(basis, directions[:, keep], floor), floor, self.zero_tol)
                found.add(kept, zero_counts(basis, kept, self.zero_tol, floor))
                # the selection runs once the kept directions span all B dimensions (never before: with many
                # kept proposals in a smaller span, running it on each new one would cost their count squared)
                if len(found) > before and torch.linalg.matrix_rank(found.directions) == rank:
                    chosen, score = greedy(assembly, found, rank, self.swaps)
                    if score == 1.0:
                        break
            if progress:
                progress(count)
        extra = {"rank": rank, "live_units": width, "sampled": drawn, "candidates": len(found),
                 "consistency": score, "noise_level": sigma, "drowned": drowned}
        if len(chosen) == rank and score >= MIN_CONSISTENCY:
            normalized = assembly.inputs(found.directions[:, chosen])
        else:  # too few directions, or a choice ReLU contradicts: no input is disaggregated from the others
            normalized = torch.empty(0, rows.shape[1], dtype=torch.float64)
        mean, std = view.model.mean.cpu().double(), view.model.std.cpu().double()
        found_images = (normalized.view(-1, *view.shape) * std + mean).float().clamp(0, 1)
        images, recovered = fill_slots(found_images, view.batch_size)
        y = label_methods.resolve(self.labels, view, simulate)
        return Reconstruction(images, y, drawn, extra=extra, recovered=recovered)

