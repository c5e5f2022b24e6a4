"""Per-sample clipping, vectorised (``Protocol.per_sample_gradients``: vmap of grad) against a loop over the batch.

DP-SGD, DIFF2 and post-noise sketching clip every per-sample gradient, sum_i min(1, C/||g_i||) g_i. The client
computes it once per local step; an adaptive attacker computes it, with a graph, at every iteration and
differentiates it in the dummy images. Both are timed here, for each model and batch size (vmap forced, whatever
the size), with the largest difference between the two sums and the path ``per_sample_gradients`` takes by default
(``Protocol.vmap_pays``: on CPU it vmaps only while batch x parameters stays under ``CPU_VMAP_SAMPLE_FLOATS``,
measured here). Usage:

    python benchmarks/per_sample_clipping.py [--threads 1] [--repeats 3] [--batches 8,32] [--device cpu]
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
from attack_speed import MODELS, batch_of, timed  # a sibling script: benchmarks/ is on the path when run as a script

from giabench import data, models, protocols
from giabench.defenses.dp_sgd import clipped_sum
from giabench.defenses.mechanisms import clip_update

LABELS = ("lenet", "convnet16", "convnet64", "resnet18")  # of attack_speed.MODELS


def looped_sum(protocol, params, x, y, clip):
    """The reference: one gradient per sample, clipped, summed."""
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(x.shape[0]):
        grads = clip_update(protocol.gradient(params, x[i:i + 1], y[i:i + 1]), clip)
        total = {k: total[k] + grads[k] for k in total}
    return total


def compare(protocol, x, y, repeats: int, device: str) -> tuple[list[float], list[float], float]:
    """(client ms loop/vmap, attacker ms loop/vmap, max |difference| of the two sums)."""
    z = x.clone().requires_grad_(True)

    def client(fn):
        return fn(protocol, protocol.params, x, y, 1.0)

    def attacker(fn):
        total = fn(protocol, protocol.params, z, y, 1.0)
        return torch.autograd.grad(sum(v.pow(2).sum() for v in total.values()), z)

    with mock.patch.object(protocols, "CPU_VMAP_SAMPLE_FLOATS", float("inf")):  # vmap whatever the size
        fast, slow = client(clipped_sum), client(looped_sum)
        diff = max(float((fast[k] - slow[k]).abs().max()) for k in fast)
        return ([timed(lambda f=f: client(f), repeats, device) * 1e3 for f in (looped_sum, clipped_sum)],
                [timed(lambda f=f: attacker(f), repeats, device) * 1e3 for f in (looped_sum, clipped_sum)], diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    imageset = data.load("cifar10-sample")
    print(f"device {args.device}, {torch.get_num_threads()} threads")
    print(f"{'model':10s} {'B':>3s} {'client loop ms':>15s} {'vmap ms':>8s} {'x':>5s} "
          f"{'attacker loop ms':>17s} {'vmap ms':>8s} {'x':>5s} {'max |diff|':>10s} {'default':>7s}")
    for name in LABELS:
        arch, params = MODELS[name]
        model = models.build(arch, params, imageset, "untrained", 0).to(args.device).eval()
        protocol = protocols.build("fedsgd", {}, model)
        for batch in (int(b) for b in args.batches.split(",")):
            x, y = batch_of(imageset, batch, args.device)
            client, attack, diff = compare(protocol, x, y, args.repeats, args.device)
            default = "vmap" if protocol.vmap_pays(batch, protocols.CPU_VMAP_SAMPLE_FLOATS) else "loop"
            print(f"{name:10s} {batch:3d} {client[0]:15.1f} {client[1]:8.1f} {client[0] / client[1]:5.1f} "
                  f"{attack[0]:17.1f} {attack[1]:8.1f} {attack[0] / attack[1]:5.1f} {diff:10.2e} {default:>7s}")


if __name__ == "__main__":
    main()
