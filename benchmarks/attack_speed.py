"""Cost of one attack iteration relative to one plain gradient of the same model and batch.

An optimization attack's iteration computes the simulated update with a graph (forward, backward with
create_graph) and then differentiates the matching loss with respect to the dummy images (a double backward), so its
floor is about 2 plain gradients. Usage:

    python benchmarks/attack_speed.py [--device cpu|cuda] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from giabench import data, models, protocols
from giabench.attacks.base import ServerView
from giabench.attacks.optimization import InvertingGradients
from giabench.defenses.baselines import NoDefense


def _timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(arch: str, params: dict, batch: int, device: str, repeats: int) -> tuple[float, float]:
    imageset = data.load("cifar10-sample")
    x, y = data.sample(imageset, batch, 0)
    x, y = x.to(device), y.to(device)
    model = models.build(arch, params, imageset, "untrained", 0).to(device).eval()
    protocol = protocols.build("fedsgd", {}, model)
    client = NoDefense(protocol)
    message = client.share(x, y, torch.Generator())
    view = ServerView(model, protocol, message, {}, imageset.shape, imageset.num_classes, batch, y.cpu())

    def plain():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()

    attack = InvertingGradients(labels="known")
    mean, std = model.mean, model.std
    z = torch.randn_like(x).requires_grad_(True)

    def iteration():  # the work of one step: the objective and its gradient in the dummy images
        loss = attack.objective(z, view.labels.to(device), client.simulate, message, mean, std)
        torch.autograd.grad(loss, z)

    return _timed(plain, repeats, device), _timed(iteration, repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}, torch {torch.__version__}")
    print(f"{'model':10s} {'batch':>5s} {'gradient ms':>12s} {'iteration ms':>13s} {'ratio':>6s}")
    for arch, params in (("convnet", {"width": 64}), ("resnet18", {})):
        for batch in (1, 8):
            gradient, iteration = measure(arch, params, batch, args.device, args.repeats)
            print(f"{arch:10s} {batch:5d} {gradient * 1e3:12.1f} {iteration * 1e3:13.1f} {iteration / gradient:6.2f}")


if __name__ == "__main__":
    main()
