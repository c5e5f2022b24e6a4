"""Gradient sketching (Song, Wang, Yu, Zhang, "Sketching for First Order Method: Efficient Algorithm for
Low-Bandwidth Channel and Vulnerability", ICML 2023).

The client flattens its update u in R^d and sends y = R u with R an s x d sketch drawn from a public per-round seed;
the server desketches with R^T (E[R^T R] = I). Sketches:
- ``gaussian``: R_ij ~ N(0, 1/s);
- ``countsketch``: R_{h(j), j} = sign_j with a hash h: [d] -> [s] and random signs (R R^T is diagonal, holding the
  bucket sizes);
- ``srht``: R = s^(-1/2) P H D, D random signs, H the +-1 Walsh-Hadamard matrix of size d' = 2^ceil(log2 d) (u is
  zero-padded), P a sample of s rows without replacement (R R^T = (d'/s) I).
Without noise sketching is not private (the paper's own point): the attacker who knows R minimizes
||R grad(x_hat) - y||^2 (Eq. 7.2), which ``ig``/``dlg`` do through ``simulate``. With ``secret: true`` the seed is
withheld and the matched attack is not applicable; that is obscurity, not privacy, and is recorded as such.

Noise (``noise``), our documented choice where the paper leaves it open:
- ``pre``: DP-SGD (per-sample clip C, noise z C) on every local step, then the sketch; sketching is post-processing,
  so epsilon is the DP-SGD accountant's.
- ``post``: y = R clip(u, C) + N(0, (z ||R||_op C)^2 I_s). Adding or removing the client's whole update moves R u by at
  most ||R||_op C (user level), and ||R||_op is computed exactly for the drawn, public R (largest singular value for
  Gaussian, sqrt of the largest bucket for CountSketch, sqrt(d'/s) for SRHT): one Gaussian release with noise
  multiplier z per round, accounted by Opacus' RDP accountant.
Epsilon composes every message the client shared, for the stated ``adjacency`` (replace-one halves z).
"""

from __future__ import annotations

import math

import torch

from giabench.checks import Param
from giabench.contracts import Axis, Client
from giabench.defenses.dp_sgd import DPSGD
from giabench.defenses.mechanisms import clip_update
from giabench.errors import ConfigError, NotApplicable
from giabench.privacy import ADJACENCY, DELTA, dp_cost, gaussian_release
from giabench.protocols import Update
from giabench.registry import defense

KINDS = ("gaussian", "countsketch", "srht")
NOISE = ("none", "pre", "post")
GAUSSIAN_LIMIT = 2 ** 26  # entries of a dense Gaussian sketch (256 MB of float32)


def hadamard(v: torch.Tensor) -> torch.Tensor:
    """H v for the unnormalized Sylvester Walsh-Hadamard matrix of size len(v) = 2^m (fast transform, O(d log d))."""
    n, h = v.shape[-1], 1
    out = v
    while h < n:
        pairs = out.reshape(*v.shape[:-1], n // (2 * h), 2, h)
        out = torch.stack([pairs[..., 0, :] + pairs[..., 1, :], pairs[..., 0, :] - pairs[..., 1, :]], dim=-2)
        h *= 2
    return out.reshape(v.shape)


class Sketch:
    """One s x d sketch R drawn from ``seed``: ``apply`` computes R u, ``transpose`` R^T y, ``norm`` ||R||_op."""

    def __init__(self, kind: str, d: int, s: int, seed: int):
        self.kind, self.d, self.s = kind, d, s
        gen = torch.Generator().manual_seed(seed)
        if kind == "gaussian":
            if s * d > GAUSSIAN_LIMIT:
                raise ConfigError(f"defense sketch: a dense Gaussian sketch of {s} x {d} is too large; use "
                                  "countsketch or srht")
            self.matrix = torch.randn(s, d, generator=gen) / math.sqrt(s)
        elif kind == "countsketch":
            self.bucket = torch.randint(s, (d,), generator=gen)
            self.sign = torch.randint(2, (d,), generator=gen).float() * 2 - 1
        else:
            self.padded = 2 ** math.ceil(math.log2(d))
            if s > self.padded:
                raise ConfigError(f"defense sketch: srht needs s <= {self.padded}")
            self.sign = torch.randint(2, (self.padded,), generator=gen).float() * 2 - 1
            self.rows = torch.randperm(self.padded, generator=gen)[:s]

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        if self.kind == "gaussian":
            return self.matrix.to(u.device) @ u
        if self.kind == "countsketch":
            signed = u * self.sign.to(u.device)
            return torch.zeros(self.s, dtype=u.dtype, device=u.device).index_add(0, self.bucket.to(u.device), signed)
        padded = torch.cat([u, u.new_zeros(self.padded - self.d)]) * self.sign.to(u.device)
        return hadamard(padded)[self.rows.to(u.device)] / math.sqrt(self.s)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "gaussian":
            return self.matrix.to(y.device).T @ y
        if self.kind == "countsketch":
            return y[self.bucket.to(y.device)] * self.sign.to(y.device)
        full = y.new_zeros(self.padded).index_copy(0, self.rows.to(y.device), y)
        return (hadamard(full) * self.sign.to(y.device))[: self.d] / math.sqrt(self.s)

    def norm(self) -> float:
        if self.kind == "gaussian":
            return float(torch.linalg.matrix_norm(self.matrix, ord=2))
        if self.kind == "countsketch":
            return math.sqrt(float(torch.bincount(self.bucket, minlength=self.s).max()))
        return math.sqrt(self.padded / self.s)


def flatten(update: Update) -> torch.Tensor:
    return torch.cat([v.flatten() for v in update.values()])


def unflatten(vector: torch.Tensor, like: Update) -> Update:
    out, start = {}, 0
    for k, v in like.items():
        out[k] = vector[start:start + v.numel()].view_as(v)
        start += v.numel()
    return out


@defense("sketch")
class Sketching(Client):
    """The client sends y = R u (+ noise) with R an s x d sketch, s = ratio * d (Song et al. 2023, Alg. 1)."""

    strength = Axis.of("ratio", 0.5, 0.1, 0.03, 0.01)
    parameters = {
        "kind": Param("the sketch R: dense gaussian, countsketch (hash and sign) or srht (subsampled Hadamard)",
                      choices=KINDS),
        "ratio": Param("s / d, the sketch's rows over the update's entries", above=0, at_most=1),
        "noise": Param("none; pre: DP-SGD on every local step, then the sketch; post: clip the update, sketch, "
                       "then Gaussian noise", choices=NOISE),
        "clip": Param("C: the per-sample gradient norm bound (pre) or the whole update's (post)", above=0),
        "noise_multiplier": Param("z: noise std z C per step (pre) or z ||R||_op C on the sketch (post)", at_least=0),
        "delta": DELTA,
        "seed": Param("the public seed of R (a fresh sketch every training round: seed * 100003 + round)"),
        "secret": Param("withhold the seed from the server (obscurity, not privacy: the matched attack cannot run)"),
        "adjacency": ADJACENCY,
    }

    def __init__(self, protocol, *, kind: str = "countsketch", ratio: float = 0.1, noise: str = "none",
                 clip: float = 1.0, noise_multiplier: float = 1.0, delta: float = 1e-5, seed: int = 0,
                 secret: bool = False, adjacency: str = "add-remove"):
        super().__init__(protocol)
        self.noise, self.clip, self.noise_multiplier, self.delta, self.secret = noise, clip, noise_multiplier, \
            delta, secret
        self.adjacency = adjacency
        self.dp = DPSGD(protocol, clip=clip, noise_multiplier=noise_multiplier, delta=delta,
                        adjacency=adjacency) if noise == "pre" else None
        d = self.numel()
        self.sketch = Sketch(kind, d, max(1, round(ratio * d)), seed)
        self.public = {} if secret else {"seed": seed, "kind": kind, "s": self.sketch.s}

    @classmethod
    def round_params(cls, params, round_index):
        """A fresh public sketch R_t every training round: seed * 100003 + t."""
        return {**params, "seed": params["seed"] * 100_003 + round_index}

    def rule(self, generator):
        return self.dp.rule(generator) if self.dp else None

    def transform(self, update, generator):
        if generator is None and self.secret:
            raise NotApplicable("sketch: the sketch seed is secret, so the server cannot match R grad(x); this is "
                                "obscurity, not privacy")
        if self.noise == "post":
            update = clip_update(update, self.clip)
        y = self.sketch.apply(flatten(update))
        if self.noise == "post" and generator is not None and self.noise_multiplier > 0:
            bound = self.sketch.norm() * self.clip
            y = gaussian_release({"sketch": y}, self.noise_multiplier * bound, bound, generator)["sketch"]
        return {"sketch": y}

    def account(self, x):
        if self.dp or (self.noise == "post" and self.noise_multiplier > 0):  # pre: every local step; post: one
            self.releases.append((self.noise_multiplier, 1.0, self.protocol.local_steps(x) if self.dp else 1))

    def decode(self, message: Update) -> Update:
        """The server's unbiased estimate of the update: R^T y."""
        return unflatten(self.sketch.transpose(message["sketch"]), self.protocol.params)

    def cost(self):
        cost = {**super().cost(), "bytes": self.value_bytes() * self.sketch.s}
        if self.dp or (self.noise == "post" and self.noise_multiplier > 0):
            return {**cost, **dp_cost(self.releases, 1, self.delta, self.adjacency)}
        return cost
