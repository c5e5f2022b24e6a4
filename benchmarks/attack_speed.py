"""Cost of one attack iteration relative to one plain gradient of the same model and batch.

An optimization attack's iteration computes the simulated update with a graph (forward, backward with
create_graph) and then differentiates the matching loss with respect to the dummy images (a double backward), so its
floor is about 2 plain gradients in arithmetic. The ``torch 2nd`` column is what torch itself takes for that
second-order pass with the cheapest objective (a fixed inner product with the weight gradient, no cosine, no TV):
IG's iteration over it is the cost of our objective and plumbing, the rest is torch's double backward (whose
convolution rule also computes each layer's weight derivative, whatever its output mask asks: its share,
benchmarks/conv_double_backward.py). Peak memory of the attack iterations: resident set size on CPU (the
whole process, torch included; Linux's VmHWM), ``torch.cuda.max_memory_allocated`` on CUDA; each row runs in a
fresh process, so no row inherits another's peak or allocator cache. Usage:

    python benchmarks/attack_speed.py [--device cpu|cuda] [--repeats 5] [--threads N] [--models convnet64,resnet18]
                                      [--batches 1,8]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from giabench import data, models, protocols
from giabench.attacks.optimization import InvertingGradients
from giabench.contracts import ServerView
from giabench.defenses.baselines import NoDefense


def timed(fn, repeats: int, device: str) -> float:
    """The median wall time of ``repeats`` calls after one warm-up (synchronizing CUDA around each)."""
    return timed_together([fn], repeats, device)[0]


def timed_together(fns, repeats: int, device: str) -> list[float]:
    """The median wall time of each function over ``repeats`` rounds that call them in turn, after one warm-up each:
    interleaved, so a slow spell of a shared machine falls on all of them alike and their ratios stay fair."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times, strict=True):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


MODELS = {"convnet16": ("convnet", {"width": 16}), "convnet64": ("convnet", {"width": 64}),
          "resnet18": ("resnet18", {}), "lenet": ("lenet", {}), "mlp": ("mlp", {})}


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as refs:  # Linux: "5" resets the peak resident set size
            refs.write("5")


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1)) / 1024


def batch_of(imageset, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` images of the set (repeated when the set holds fewer)."""
    x, y = data.sample(imageset, min(batch, len(imageset)), 0)
    repeat = -(-batch // len(x))
    return x.repeat(repeat, 1, 1, 1)[:batch].to(device), y.repeat(repeat)[:batch].to(device)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"


def undefended_round(label: str, imageset, x: torch.Tensor, y: torch.Tensor, device: str):
    """The zoo model ``label`` (``MODELS``, untrained, eval mode) on ``device`` and one undefended FedSGD round on
    (x, y): (model, client, the server's view with the labels)."""
    arch, params = MODELS[label]
    model = models.build(arch, params, imageset, "untrained", 0).to(device).eval()
    client = NoDefense(protocols.build("fedsgd", {}, model))
    view = ServerView(model, client.protocol, client.share(x, y, torch.Generator()), {}, imageset.shape,
                      imageset.num_classes, len(x), y.cpu())
    return model, client, view


def measure(label: str, batch: int, device: str, repeats: int, threads: int = 0) -> tuple[float, ...]:
    """(s of one plain gradient, of torch's second-order pass, of one attack iteration; peak MiB of one
    iteration)."""
    if threads:
        torch.set_num_threads(threads)
    imageset = data.load("cifar10-sample")
    x, y = batch_of(imageset, batch, device)
    model, client, view = undefended_round(label, imageset, x, y, device)

    def plain():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()

    weights = list(model.parameters())
    direction = [torch.randn_like(w) for w in weights]

    def second_order():  # torch's pass alone: d/dz <grad_w CE(f_w(z), y), v>
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(z), y), weights, create_graph=True)
        torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, direction, strict=True)), z)

    attack = InvertingGradients(labels="known")
    mean, std = model.mean, model.std
    z = torch.randn_like(x).requires_grad_(True)

    def iteration():  # the work of one step: the objective and its gradient in the dummy images
        loss = attack.objective(z, view.labels.to(device), client.simulate, view.message, mean, std)
        torch.autograd.grad(loss, z)

    reset_peak_memory(device)
    iteration()
    peak = peak_memory_mib(device)
    return (*timed_together([plain, second_order, iteration], repeats, device), peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--models", default="convnet64,resnet18", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device: {device_name(args.device)}, torch {torch.__version__}")
    print(f"{'model':10s} {'batch':>5s} {'gradient ms':>12s} {'torch 2nd ms':>13s} {'iteration ms':>13s} "
          f"{'ratio':>6s} {'2nd ratio':>9s} {'iter/2nd':>8s} {'peak MiB':>9s}")
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as fresh:
                gradient, floor, iteration, peak = fresh.submit(measure, model, batch, args.device, args.repeats,
                                                                args.threads).result()
            print(f"{model:10s} {batch:5d} {gradient * 1e3:12.1f} {floor * 1e3:13.1f} {iteration * 1e3:13.1f} "
                  f"{iteration / gradient:6.2f} {floor / gradient:9.2f} {iteration / floor:8.2f} {peak:9.0f}")


if __name__ == "__main__":
    main()
