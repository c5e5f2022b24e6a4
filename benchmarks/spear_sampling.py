"""SPEAR's sampling cost from the batch's true activation pattern: why a batch of B needs the draws it needs.

SPEAR finds the direction of sample j when its B-1 random rows of L (live units of the first layer) are all inactive
for sample j: with z_j of the m live units inactive for j, one draw hits j with probability
    p_j = C(z_j, B-1) / C(m, B-1),
so the expected draws until every direction is found is E = int_0^inf (1 - prod_j (1 - exp(-p_j t))) dt (a coupon
collector with unequal probabilities), dominated by the sample that activates the most units. Printed per batch
(the cells' own model and batch: the same seeds as a suite's cells): the mean share of inactive units, the hardest
sample's p_j, E, and E at the measured sampling rate (``--rate``, draws per second on this machine).

    .venv/bin/python benchmarks/spear_sampling.py [--dataset mnist-5k] [--width 256] [--batch 16 20 25] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from scipy import integrate

from giabench import components, data


def inactive_pattern(imageset, width: int, batch: int, seed: int) -> torch.Tensor:
    """(m_live x B) booleans: live unit i is inactive (pre-activation <= 0) for sample j, in the cell's model."""
    x, _ = data.sample(imageset, batch, seed, "random")
    model = components.build_model(components.model("mlp", {"width": width}), imageset, seed)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        z = ((x - model.mean) / model.std).flatten(1) @ first.weight.T + first.bias
    inactive = (z <= 0).T
    return inactive[~inactive.all(dim=1)]  # a unit inactive for the whole batch is dead: its row of G is zero


def expected_draws(p: np.ndarray) -> float:
    """E[draws until every sample is hit once], p_j per draw (events of one draw nearly disjoint)."""
    scale = 1 / p.min()
    value, _ = integrate.quad(lambda t: 1 - np.prod(1 - np.exp(-p * t * scale)), 0, np.inf, limit=500)
    return value * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 20, 25])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rate", type=float, default=76e3, help="draws per second measured here (default: "
                                                                 "%(default)s, b = 25 on 2 cores)")
    args = parser.parse_args()
    imageset = data.load(args.dataset)
    print("B  seed  live  inactive  hardest p_j  E[draws]  E at --rate")
    for batch in args.batch:
        for seed in args.seeds:
            inactive = inactive_pattern(imageset, args.width, batch, seed)
            m = inactive.shape[0]
            p = np.array([math.comb(int(z), batch - 1) / math.comb(m, batch - 1) for z in inactive.sum(0)])
            draws = expected_draws(p) if (p > 0).all() else math.inf
            print(f"{batch:2d} {seed:5d} {m:5d} {float(inactive.float().mean()):9.3f} {p.min():12.2e} "
                  f"{draws:9.2e} {draws / args.rate / 60:9.1f} min")


if __name__ == "__main__":
    main()
