"""IG's restarts vmapped together against the same restarts one after another, and against a single restart.

Runs ``InvertingGradients.reconstruct`` at batch size 1 with ``restarts`` 1 and R: batched (forced, whatever the
model's size) and sequential (the same attack given a plain function instead of the client's method, which turns
batching off). Prints seconds per run, R batched over one restart (the target: at most 3 on CPU for the small
models, at most 2 on a GPU), batched over sequential, the path IG takes by default (``Protocol.vmap_pays``: on CPU
it batches only small models, ``CPU_BATCHED_RESTART_FLOATS``, measured here) and the largest pixel difference between
the batched and sequential reconstructions (float32 rounding of the batched kernels; zero in float64, see the
tests).
Usage:

    python benchmarks/restart_batching.py [--device cpu|cuda] [--threads 1] [--restarts 8] [--iterations 20]
                                          [--models lenet,mlp,convnet16,convnet64,resnet18]
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch
from attack_speed import batch_of, device_name, undefended_round  # a sibling script: benchmarks/ is on the path

from giabench import data
from giabench.attacks import optimization
from giabench.attacks.optimization import InvertingGradients


def timed_run(attack, view, simulate, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    recon = attack.reconstruct(view, simulate, torch.Generator().manual_seed(0))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, recon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--restarts", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--models", default="lenet,mlp,convnet16,convnet64,resnet18")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    imageset = data.load("cifar10-sample")
    x, y = batch_of(imageset, 1, args.device)
    print(f"device: {device_name(args.device)}; IG at B=1, {args.iterations} iterations, R={args.restarts}")
    print(f"{'model':10s} {'one s':>7s} {'R seq s':>8s} {'R batched s':>12s} {'batched/one':>12s} "
          f"{'batched/seq':>12s} {'default':>10s} {'max |pixel diff|':>17s}")
    for label in args.models.split(","):
        _, client, view = undefended_round(label, imageset, x, y, args.device)
        single = InvertingGradients(iterations=args.iterations, restarts=1)
        several = InvertingGradients(iterations=args.iterations, restarts=args.restarts)
        timed_run(single, view, client.simulate, args.device)  # warm-up
        one, _ = timed_run(single, view, client.simulate, args.device)
        sequential, by_one = timed_run(several, view, lambda x, y, c=client: c.simulate(x, y), args.device)
        with mock.patch.object(optimization, "CPU_BATCHED_RESTART_FLOATS", float("inf")):
            batched, together = timed_run(several, view, client.simulate, args.device)
        default = "batched" if several._batch_restarts(view, client.simulate) else "sequential"
        diff = float((together.images - by_one.images).abs().max())
        print(f"{label:10s} {one:7.2f} {sequential:8.2f} {batched:12.2f} {batched / one:12.2f} "
              f"{batched / sequential:12.2f} {default:>10s} {diff:17.2e}")


if __name__ == "__main__":
    main()
