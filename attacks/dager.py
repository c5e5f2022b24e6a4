"""DAGER (Petrov, Dimitrov, Baader, Mueller, Vechev, NeurIPS 2024): exact recovery of a batch of token sequences from
the low rank of attention-layer gradients.

A linear layer Y = Z W^T has the weight gradient dL/dW = (dL/dY)^T Z (Thm. 3.1), so when the b token rows of Z are
fewer than the width d its gradient's row space is the span of those rows (Thm. 5.1), and a vector that is not a row
lies in it with probability 0 (Thm. 5.2). Applied to the projections of attention block l, whose input Z_l is known
for any candidate tokens, and with G_l the observed gradients of its query, key and value weights stacked (GPT-2's
fused c_attn, the tensor the paper's code reads: the first token's query gradient is zero under causal attention, its
key and value gradients are not): with R_l an orthonormal basis of the row space of G_l (right singular vectors above
the numerical rank, capped at d - Delta_b), a candidate input z is in the batch iff
    d(z, l) = || z/||z|| - R_l^T R_l z/||z|| ||_2 < tau_l                                         (Eq. 2)
- Layer 1 (Alg. 1): the first block's query input for token v at position i depends on v and i only, so every
  vocabulary token is checked at every position: T*_i = {v : d(f^0(v, i), 1) < tau_1}.
- Decoder (Alg. 2): causal attention makes block 2's query input at position i a function of the prefix s_{<=i}, so
  prefixes grow one position at a time: S_i = {s + v : s in S_{i-1}, v in T*_i, d(f^1_i(s + v), 2) < tau_2}.
- Encoder (Alg. 3): block 2's input depends on the whole sequence, so full sequences from T*_0 x ... x T*_{n-1} (each
  cut to the B closest tokens, every combination while there are at most ``max_candidates``, else that many drawn at
  random) are scored by their mean d(., 2) over positions, and the B best distinct ones kept.
LoRA (App. B.4): with adapters only trained and shared, G_l stacks the gradients of the query and value adapters'
down-projections A (r x d), dL/dA = (B^T dL/dY)^T Z_l, whose row space is the inputs' span while b < r. FedAvg
(App. B.3): the update w_0 - w_K sums the local steps' gradients, so block 1's stays in the span exactly and block 2's
approximately; the paper runs both variants with looser thresholds (FedAvg 5e-3, LoRA 5e-2).
Adaptive to pruning (ours; the paper has no pruning experiment): top-k pruning publishes its support and drops only
entries smaller than the smallest it keeps, t; the true G_l has rank at most b = B n. So the attacker completes the
pruned G_l by hard-impute (Mazumder, Hastie, Tibshirani, JMLR 2010, Sec. 8) before the span check:
    X <- P_kept(G~) + P_dropped(clip(S_b(X), -t, t)),   G_l ~ S_b(X) at the end,
S_b the best rank-b approximation (``impute`` iterations; 0 turns it off).
Best effort, as in the paper: where no candidate passes a threshold the closest ones go on, so the attack always
returns B sequences; ``exact_sequences`` counts those that passed every check. The sequence length is the data's (our
text sets have fixed-length sequences); no labels are needed.
"""

from __future__ import annotations

import itertools

import torch

from giabench.attacks.base import Attack
from giabench.checks import Param
from giabench.contracts import Reconstruction
from giabench.errors import NotApplicable
from giabench.registry import attack

CHUNK = 2048  # candidate sequences per forward pass of the first block


def row_space(gradient: torch.Tensor, tolerance: float, cap: int) -> torch.Tensor:
    """Orthonormal rows spanning the row space of ``gradient`` (d_out x d_in), float64: the right singular vectors whose
    singular values exceed ``tolerance`` times the largest, at most ``cap`` of them."""
    _, singular, right = torch.linalg.svd(gradient.double(), full_matrices=False)
    if not len(singular) or singular[0] == 0:
        return right[:0]
    rank = int((singular > singular[0] * tolerance).sum())
    return right[:min(rank, cap)]


def impute(pruned: torch.Tensor, kept: torch.Tensor, rank: int, iterations: int, seed: int) -> torch.Tensor:
    """The rank-``rank`` completion of a pruned gradient by hard-impute (see the module docstring), float64; the
    randomized SVD is seeded by ``seed``."""
    observed = pruned.double()
    bound = float(observed[kept].abs().min()) if kept.any() else 0.0
    x, low = observed.clone(), observed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(iterations):
            u, s, v = torch.svd_lowrank(x, q=min(rank + 10, *x.shape), niter=2)
            low = (u[:, :rank] * s[:rank]) @ v[:, :rank].T
            x = torch.where(kept, observed, low.clamp(-bound, bound))
    return low


def span_distance(z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """d(z) = || u - R^T R u ||, u = z / ||z||, for each row of ``z`` (... x d)."""
    unit = z.double() / z.double().norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return (unit - (unit @ basis.T) @ basis).norm(dim=-1)


@attack("dager")
class Dager(Attack):
    """DAGER: the span check of the first two attention blocks' gradients (see the module docstring)."""

    family = "analytic"
    title = "DAGER"
    modalities = ("text",)
    #: judged over seeds by the gate: where a defense breaks the span, its best-effort sequences are ranked by float
    #: distances, which another CPU's rounding may reorder
    closed_form = False
    assumes = "the vocabulary and the architecture; no labels, no prior (a transformer whose batch has fewer tokens " \
              "than its width)"
    budget_unit = "candidate sequences"
    parameters = {
        "tau1": Param("layer-1 threshold on the span distance of unit vectors (the paper's 1e-5)", above=0),
        "tau2": Param("layer-2 threshold (the paper's 1e-3)", above=0),
        "rank_tol": Param("numerical rank: singular values above rank_tol times the largest (float32 gradients put "
                          "their rounding floor near 1e-8)", above=0, below=1),
        "rank_cap": Param("Delta_b: the span's rank is capped at d - Delta_b (the paper's 20)", at_least=0),
        "max_candidates": Param("encoder: full sequences scored at most (drawn at random past it)", at_least=1),
        "impute": Param("against pruning (a public mask): hard-impute iterations completing each pruned gradient to "
                        "rank B n before the span check (0: read the pruned gradient as it is)", at_least=0),
    }

    def __init__(self, *, tau1: float = 1e-5, tau2: float = 1e-3, rank_tol: float = 1e-7, rank_cap: int = 20,
                 max_candidates: int = 10000, impute: int = 50):
        self.tau1, self.tau2, self.max_candidates, self.impute = tau1, tau2, max_candidates, impute
        self.rank_tol, self.rank_cap = rank_tol, rank_cap

    def applies(self, model, shape, protocol, batch_size):
        if not hasattr(model, "query_inputs") or len(getattr(model, "blocks", ())) < 2:
            return "DAGER needs a transformer of giabench.text_models or giabench.hub (two attention blocks or more)"
        return None

    def reconstruct(self, view, simulate, generator, progress=None):
        net = view.model.net
        reason = self.applies(net, view.shape, view.protocol.name, view.batch_size)
        if reason:
            raise NotApplicable(reason)
        width = net.token_embedding.weight.shape[1]
        masks = view.public.get("mask")
        masks = masks if isinstance(masks, dict) else None  # top-k pruning's: one mask per tensor
        bases = []
        for layer in (0, 1):
            names = net.attention_weights(layer)
            if any(f"net.{name}" not in view.message for name in names):
                raise NotApplicable(f"the message carries no gradient of block {layer + 1}'s attention projections")
            stacked = torch.cat([net.input_rows(name, view.message[f"net.{name}"]) for name in names])
            if masks and self.impute:
                kept = torch.cat([net.input_rows(name, masks[f"net.{name}"]) for name in names]) != 0
                rank = min(view.batch_size * view.shape[0], width - self.rank_cap)
                seed = int(torch.randint(2**31, (1,), generator=generator))
                stacked = impute(stacked, kept, rank, self.impute, seed)
            bases.append(row_space(stacked, self.rank_tol, width - self.rank_cap))
        if not len(bases[0]) or not len(bases[1]):
            raise NotApplicable("the attention gradients are zero, nothing spans the inputs (a LoRA adapter whose "
                                "up-projection is still 0 gives its down-projection no gradient)")
        length = view.shape[0]
        with torch.no_grad():
            tokens = [self._layer1(net, i, bases[0], view.batch_size) for i in range(length)]
            if net.causal:
                found, scored, exact = self._decoder(net, tokens, bases[1], view.batch_size)
            else:
                found, scored, exact = self._encoder(net, tokens, bases[1], view.batch_size, generator)
        if progress:
            progress(scored)
        extra = {"rank_layer1": len(bases[0]), "rank_layer2": len(bases[1]), "exact_sequences": exact,
                 "layer1_candidates": sum(len(t) for t in tokens) / length, "tokens": view.batch_size * length,
                 "imputed": bool(masks and self.impute)}
        return Reconstruction(found.cpu(), None, scored, extra=extra)

    def _layer1(self, net, position: int, basis: torch.Tensor, batch_size: int) -> torch.Tensor:
        """T*_i: the tokens whose block-1 query input at ``position`` lies in the span, closest first (the
        ``batch_size`` closest where none passes)."""
        distance = span_distance(net.first_query_inputs(position), basis)
        order = distance.argsort()
        passing = order[distance[order] < self.tau1]
        return passing if len(passing) else order[:batch_size]

    def _layer2(self, net, sequences: torch.Tensor, basis: torch.Tensor, last: bool = False) -> torch.Tensor:
        """d(f^1_p(s), 2) for every sequence s and position p (N x n); ``last``: at the last position only (N), by
        the model's ``last_second_query_input`` where it has one (block 1 run for that position alone)."""
        if last and hasattr(net, "last_second_query_input"):
            inputs = (net.last_second_query_input(part) for part in sequences.split(CHUNK))
        else:
            inputs = (net.query_inputs(part, 2)[1][:, -1 if last else slice(None)] for part in sequences.split(CHUNK))
        return torch.cat([span_distance(z, basis) for z in inputs])

    def _decoder(self, net, tokens, basis, batch_size):
        """Alg. 2: prefixes grown position by position, each extension kept when block 2's input at its new position
        is in the span (the ``batch_size`` best by summed distance where none is); at most ``keep`` prefixes go on,
        lowest summed distance first. Returns the sequences (those that passed every check first), the count
        scored and how many passed."""
        prefixes = torch.zeros(1, 0, dtype=torch.long, device=basis.device)
        scores = torch.zeros(1, dtype=torch.float64, device=basis.device)
        passed = torch.ones(1, dtype=torch.bool, device=basis.device)  # every check so far below its threshold
        scored, keep = 0, max(8 * batch_size, 64)
        for candidates in tokens:
            grown = torch.cat([prefixes.repeat_interleave(len(candidates), 0),
                               candidates.to(prefixes.device).repeat(len(prefixes))[:, None]], dim=1)
            distance = self._layer2(net, grown, basis, last=True)
            scored += len(grown)
            total = scores.repeat_interleave(len(candidates)) + distance
            passing = distance < self.tau2
            chosen = passing.nonzero().flatten() if passing.any() else total.argsort()[:batch_size]
            chosen = chosen[total[chosen].argsort()][:keep]
            prefixes, scores = grown[chosen], total[chosen]
            passed = (passed.repeat_interleave(len(candidates)) & passing)[chosen]
        first = (~passed).double().argsort(stable=True)  # those that passed every check, each group by score
        return _fill(prefixes[first], batch_size), scored, min(int(passed.sum()), batch_size)

    def _encoder(self, net, tokens, basis, batch_size, generator):
        """Alg. 3: whole sequences from the ``batch_size`` closest tokens per position (all combinations up to
        ``max_candidates``, else that many drawn), the ``batch_size`` of lowest mean block-2 distance kept."""
        pools = [t[:batch_size] for t in tokens]
        combinations = 1
        for pool in pools:
            combinations *= len(pool)
        if combinations <= self.max_candidates:
            picks = torch.tensor(list(itertools.product(*(range(len(p)) for p in pools))), dtype=torch.long)
        else:
            sizes = torch.tensor([len(p) for p in pools])
            picks = (torch.rand(self.max_candidates, len(pools), generator=generator) * sizes).long()
        picks = picks.view(-1, len(pools))
        sequences = torch.stack([pool.cpu()[picks[:, i]] for i, pool in enumerate(pools)], dim=1)
        sequences = torch.unique(sequences, dim=0).to(basis.device)
        distance = self._layer2(net, sequences, basis)
        mean = distance.mean(dim=1)
        order = mean.argsort()[:batch_size]
        exact = int((distance[order].max(dim=1).values < self.tau2).sum())
        return _fill(sequences[order], batch_size), len(sequences), exact


def _fill(sequences: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``batch_size`` sequences: the first ones, the last repeated where fewer were found."""
    if len(sequences) >= batch_size:
        return sequences[:batch_size]
    return torch.cat([sequences, sequences[-1:].expand(batch_size - len(sequences), -1)])
