"""The privacy audit's cost and reach: the calibration of every DP setting of a suite (seconds each, as ``make test``
runs it for the smoke suite), and the empirical epsilon lower bound against the claim as the draws grow, for DP-SGD
at z = 1 (one release, delta 1e-5, add-remove: 4.73 claimed) and for the same mechanism drawing no noise while its
accountant still counts z = 1.

    .venv/bin/python benchmarks/dp_audit_cost.py [--suite smoke] [--draws 200] [--lower 1000 4000]
"""

from __future__ import annotations

import argparse
import time

from giabench import privacy, privacy_audit, suite
from giabench.defenses import dp_sgd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="smoke")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--lower", type=int, nargs="+", default=[1000, 4000])
    args = parser.parse_args()
    cells = privacy_audit.dp_cells(suite.load(args.suite).cells)
    total = time.perf_counter()
    for cell in cells:
        start = time.perf_counter()
        report = privacy_audit.audit_cell(cell, draws=args.draws)
        print(f"{'pass' if report.passed else 'FAIL'}  {time.perf_counter() - start:5.1f} s  "
              f"{len(report.checks)} checks  {report.setting}")
    print(f"calibration of {len(cells)} settings of {args.suite}: {time.perf_counter() - total:.1f} s\n")
    target = next(c for c in cells if c.defense.name == "dp-sgd" and c.model.name == "mlp" and c.batch_size == 1)
    for label, noiseless in (("DP-SGD z = 1", False), ("the same, drawing no noise", True)):
        if noiseless:
            dp_sgd.gaussian_release = lambda value, std, sensitivity, generator: privacy.gaussian_release(
                value, 0.0, sensitivity, generator)
        for draws in args.lower:
            start = time.perf_counter()
            report = privacy_audit.audit_cell(target, draws=20, lower_draws=draws)
            print(f"{label}: epsilon_lower {report.lower:.3f} with {draws} draws per neighbour (claimed "
                  f"{report.release_claim:.3f} at delta {report.delta:g}, {report.adjacency}); "
                  f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
