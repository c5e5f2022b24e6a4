"""A DCGAN (Radford, Metz, Chintala, ICLR 2016) for 28x28 and 32x32 images, written as stages for GIFD.

Generator: z in R^latent_dim -> linear projection to a (s x s) map with 2^(n-1) * width channels (s = 7 for 28 px,
4 for 32 px), BN, ReLU; then n transposed convolutions (kernel 4, stride 2) each halving the channels, BN, ReLU; then
a 3x3 convolution to the image channels and x = (tanh(.) + 1) / 2 in [0, 1]. Stages: projection, each upsampling
block, the output convolution. Discriminator: strided 4x4 convolutions (width, 2 width, 4 width) with LeakyReLU(0.2)
and BN after the first, then a linear logit.
"""

from __future__ import annotations

import torch
from torch import nn

from giabench import checks
from giabench.attacks.generators.staged import StagedGenerator
from giabench.errors import ConfigError

START = {28: 7, 32: 4}


class ToImage(nn.Module):
    def forward(self, x):
        return (torch.tanh(x) + 1) / 2


class DCGANGenerator(StagedGenerator):
    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 64, width: int = 64):
        super().__init__()
        c, h, w = shape
        if h != w or h not in START:
            raise ConfigError(f"dcgan: images must be 28x28 or 32x32, got {h}x{w}")
        checks.at_least("dcgan", 1, latent_dim=latent_dim, width=width)
        self.shape, self.latent_dim = (c, h, w), latent_dim
        start = START[h]
        ups = {7: 2, 4: 3}[start]
        chans = [width * 2 ** (ups - 1 - i) for i in range(ups)] + [max(width // 2, 1)]
        stages: list[nn.Module] = [nn.Sequential(
            nn.Linear(latent_dim, chans[0] * start * start, bias=False), nn.Unflatten(1, (chans[0], start, start)),
            nn.BatchNorm2d(chans[0]), nn.ReLU())]
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            stages.append(nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout),
                                        nn.ReLU()))
        stages.append(nn.Sequential(nn.Conv2d(chans[-1], c, 3, padding=1), ToImage()))
        self.stages = nn.ModuleList(stages)
        for m in self.modules():  # DCGAN's initialization: N(0, 0.02) weights, BN scale N(1, 0.02)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)


class DCGANDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        c, h, w = shape
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * width), nn.LeakyReLU(0.2),
            nn.Flatten())
        with torch.no_grad():
            flat = self.body(torch.zeros(2, c, h, w)).shape[1]
        self.logit = nn.Linear(flat, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x):
        return self.logit(self.body(2 * x - 1)).squeeze(1)
