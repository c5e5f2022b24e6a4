"""Epsilon of a utility run, composed over its rounds, beside an accountant written apart from Opacus.

``giabench utility`` trains with ``clients`` clients that each take part in every round (client-level q = 1) and run
``epochs`` x ceil(batch / local batch) local DP-SGD steps per round at noise multiplier z (record-level q = 1: every
step uses the client's whole minibatch). Every step is one Gaussian release, so after R rounds a record has been in
T = R x steps releases, with RDP  a T / (2 z^2)  at order a (Mironov 2017), or a T / (2 (z/2)^2) under replace-one
adjacency; converted to (epsilon, delta) as Opacus does (Balle et al. 2020):
    epsilon = min_a  rdp(a) + log((a - 1) / a) - (log delta + log a) / (a - 1).

    .venv/bin/python benchmarks/utility_epsilon.py [--rounds 3 30 300]
"""

from __future__ import annotations

import argparse
import math

from giabench import utility
from giabench.utility_config import config_from_mapping


def independent_epsilon(z: float, releases: int, delta: float) -> float:
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    return min(a * releases / (2 * z * z) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
               for a in orders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[3, 30, 300])
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    args = parser.parse_args()
    z, delta = args.noise_multiplier, 1e-5
    print("protocol adjacency rounds steps/round epsilon(giabench utility) epsilon(independent RDP)")
    for protocol, steps in (({"name": "fedsgd"}, 1), ({"name": "fedavg", "epochs": 2, "batch_size": 8, "lr": 0.1}, 4)):
        for adjacency in ("add-remove", "replace-one"):
            for rounds in args.rounds:
                cfg = config_from_mapping({"dataset": "mnist-5k", "model": {"name": "mlp", "width": 8},
                                           "protocol": protocol, "clients": 2, "rounds": rounds, "batch": 16,
                                           "test_fraction": 0.2, "defenses": [
                                               {"name": "dp-sgd", "noise_multiplier": z, "adjacency": adjacency}]},
                                          "utility_epsilon")
                row = utility.train(cfg, cfg.defenses[0])
                expected = independent_epsilon(z / 2 if adjacency == "replace-one" else z, rounds * steps, delta)
                print(f"{protocol['name']:8s} {adjacency:11s} {rounds:6d} {steps:11d} {row['epsilon']:25.4f} "
                      f"{expected:24.4f}")


if __name__ == "__main__":
    main()
