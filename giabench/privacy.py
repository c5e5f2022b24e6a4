"""Privacy accounting: epsilon of a client's Gaussian releases, composed, at a delta and for an adjacency.

Adjacency (``ADJACENCIES``): ``add-remove`` (a dataset with one record more or less; Opacus' convention) or
``replace-one`` (one record swapped, the batch size fixed and known). Replacing a record moves a sum of clipped
per-record terms by up to 2C instead of C, so the same noise std z C is a Gaussian mechanism with noise multiplier
z / 2 under replace-one.

The Gaussian releases themselves: every DP defense draws its noise through ``gaussian_release`` (a mechanism with its
own noise reports it with ``observe_release``), so that ``giabench.privacy_audit`` can observe each release, the
value before noise, what was released and the sensitivity it claims, and check them against the accountant.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from giabench.checks import Param
from giabench.errors import ConfigError

ADJACENCIES = ("add-remove", "replace-one")
Release = tuple[float, float, int]  # (noise multiplier, sample rate, steps): one entry of an accountant's history
Tensors = dict[str, torch.Tensor]

#: the parameters every DP defense documents alike
ADJACENCY = Param("the neighbouring datasets epsilon holds for: one record added or removed, or one replaced",
                  choices=ADJACENCIES)
DELTA = Param("delta of the reported (epsilon, delta)", above=0, below=1)


def check_adjacency(name: str, adjacency: str, sample_rate: float = 1.0) -> None:
    """Refuse replace-one adjacency with Poisson subsampling (the accountant's subsampled bound is add-remove's)."""
    if adjacency == "replace-one" and sample_rate < 1:
        raise ConfigError(f"defense {name}: the accountant's subsampled bound holds for add-remove adjacency only; "
                          "use sample_rate 1 with replace-one", field="adjacency")


def dp_cost(releases: list[Release], rounds: int, delta: float, adjacency: str) -> dict:
    """Epsilon, delta and adjacency of ``rounds`` repetitions of ``releases`` (no release yet: epsilon 0)."""
    return {"epsilon": rdp_epsilon(releases * rounds, delta, adjacency), "delta": delta, "adjacency": adjacency}


def rdp_epsilon(history: list[Release], delta: float, adjacency: str = "add-remove") -> float:
    """Epsilon at ``delta`` from Opacus' RDP accountant over ``(noise multiplier, sample rate, steps)`` releases,
    composed; noise multipliers are halved under replace-one adjacency. Infinite when a release with steps has no
    noise; 0 when nothing was released."""
    from opacus.accountants import RDPAccountant

    history = [(z / 2 if adjacency == "replace-one" else z, q, n) for z, q, n in history if n > 0]
    if any(z == 0 for z, _, _ in history):
        return math.inf
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = history
    return float(accountant.get_epsilon(delta))


def gaussian_like(tensor: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """N(0, std^2) noise of ``tensor``'s shape drawn on the CPU from ``generator`` (device-independent numbers)."""
    noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
    return std * noise.to(tensor.device)


@dataclass
class Observed:
    """One Gaussian release as an audit sees it: the value before noise, the released value, and the L2
    sensitivity of the value to one record (added or removed) that the mechanism's accountant assumes."""

    value: Tensors
    released: Tensors
    sensitivity: float


_observed: list[Observed] | None = None  # the releases an audit in progress collects (None: no audit)
_noiseless = False  # an audit's sensitivity pass: releases return their value without drawing noise


@contextmanager
def observing(noiseless: bool = False) -> Iterator[list[Observed]]:
    """Collect every release made inside the block (``noiseless``: draw no noise, so neighbours' values can be
    compared along the same path); used by ``giabench.privacy_audit``."""
    global _observed, _noiseless
    saved = _observed, _noiseless
    _observed, _noiseless = [], noiseless
    try:
        yield _observed
    finally:
        _observed, _noiseless = saved


def observe_release(value: Tensors, released: Tensors, sensitivity: float) -> None:
    """Report one release to an audit in progress (a mechanism that draws its noise itself, such as Opacus'
    DPOptimizer, calls this with what it computed and released)."""
    if _observed is not None:
        _observed.append(Observed({k: v.detach().cpu().clone() for k, v in value.items()},
                                  {k: v.detach().cpu().clone() for k, v in released.items()}, float(sensitivity)))


def gaussian_release(value: Tensors, std: float, sensitivity: float, generator: torch.Generator) -> Tensors:
    """The Gaussian mechanism every DP defense draws its noise through: value + N(0, std^2 I), each tensor in
    order from ``generator``. ``sensitivity`` is the L2 sensitivity of ``value`` to one record added or removed
    that the accountant's noise multiplier refers to (std = z * sensitivity); an audit checks both."""
    if _noiseless:
        released = dict(value)
    else:
        released = {k: v + gaussian_like(v, std, generator) for k, v in value.items()}
    observe_release(value, released, sensitivity)
    return released
