"""What torch's convolution double backward spends on a derivative nobody asked for.

An attack's second-order pass runs ``_convolution_double_backward`` once per convolution, asking (output mask) for
the derivatives in the layer's output gradient and its input only. torch also computes the weight derivative
gW = conv(ggI, gO) whenever ggI (the incoming gradient of the input gradient) is defined, i.e. at every layer but the
first, whatever the mask. This script times the call as torch runs it against the same two requested outputs
computed without ggI (its term of ggO, conv(ggI, W), added separately), checks both give the same outputs, and
prints the share of the call that the unrequested gW takes. Usage:

    python benchmarks/conv_double_backward.py [--threads 1] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from attack_speed import timed_together  # a sibling script: benchmarks/ is on the path when run as a script

# (batch, in channels, out channels, height = width, stride): ConvNet width 64 and ResNet-18 layers on CIFAR
LAYERS = ((1, 256, 256, 32, 1), (1, 128, 128, 16, 1), (1, 128, 128, 16, 2), (1, 512, 512, 4, 1), (8, 256, 256, 32, 1))


def compare(batch, cin, cout, hw, stride, device: str, repeats: int, generator: torch.Generator):
    """(torch's ms, ms without gW, max relative difference of the two requested outputs) for one layer."""
    def draw(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    x, w = draw(batch, cin, hw, hw), draw(cout, cin, 3, 3)
    g_out = draw(batch, cout, -(-hw // stride), -(-hw // stride))
    gg_in, gg_w = draw(*x.shape), draw(*w.shape)
    conf = ([stride, stride], [1, 1], [1, 1], False, [0, 0], 1)
    mask = [True, True, False]  # derivatives in the output gradient and the input; not in the weight

    def torch_rule():
        return torch.ops.aten._convolution_double_backward(gg_in, gg_w, None, g_out, w, x, *conf, mask)[:2]

    def without_gw():
        gg_out, g_in, _ = torch.ops.aten._convolution_double_backward(None, gg_w, None, g_out, w, x, *conf, mask)
        return gg_out + F.conv2d(gg_in, w, None, stride, 1), g_in

    diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(torch_rule(), without_gw(), strict=True))
    return (*timed_together([torch_rule, without_gw], repeats, device), diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'B':>2s} {'in':>4s} {'out':>4s} {'HW':>3s} {'s':>2s} {'torch ms':>9s} {'without gW ms':>14s} "
          f"{'gW share':>9s} {'max rel diff':>12s}")
    for layer in LAYERS:
        full, lean, diff = compare(*layer, args.device, args.repeats, generator)
        batch, cin, cout, hw, stride = layer
        print(f"{batch:2d} {cin:4d} {cout:4d} {hw:3d} {stride:2d} {full * 1e3:9.1f} {lean * 1e3:14.1f} "
              f"{1 - lean / full:9.0%} {diff:12.1e}")


if __name__ == "__main__":
    main()
