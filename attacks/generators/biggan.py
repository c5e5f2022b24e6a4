"""BigGAN-deep (Brock, Donahue, Simonyan, ICLR 2019) from the ``pytorch-pretrained-biggan`` package, as stages for
GIFD's ImageNet setting. Install the extra (``pip install -e '.[biggan]'``) and put the package's two files for a size
in ``$GIABENCH_WEIGHTS/<name>/`` (default ``~/.cache/giabench/weights``): ``config.json`` and ``pytorch_model.bin``
(``https://s3.amazonaws.com/models.huggingface.co/biggan/<name>-config.json`` and ``-pytorch_model.bin``). Nothing
is downloaded at run time, and the weights are read with ``torch.load(weights_only=True)``.

Stages: 0 is the projection of the condition c = [z, E onehot(y)] to a 4x4 map; then one stage per generator block
(and the self-attention layer); the last is BN, ReLU, the RGB convolution and x = (tanh(.) + 1) / 2. Every block is
conditioned on c, which GIFD keeps at the latent it found in round 0.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from giabench.attacks.generators.staged import StagedGenerator
from giabench.errors import ConfigError


def weights_dir() -> Path:
    return Path(os.environ.get("GIABENCH_WEIGHTS", Path.home() / ".cache" / "giabench" / "weights"))


class BigGANStages(StagedGenerator):
    """A ``pytorch_pretrained_biggan.BigGAN`` split into stages; ``truncation`` selects its stored BN statistics."""

    def __init__(self, biggan: nn.Module, truncation: float = 1.0):
        super().__init__()
        if not 0 < truncation <= 1:
            raise ConfigError(f"biggan: truncation must be in (0, 1], got {truncation}")
        config = biggan.config
        self.biggan, self.truncation = biggan, truncation
        self.latent_dim, self.num_classes = config.z_dim, config.num_classes
        self.shape = (3, config.output_dim, config.output_dim)
        self.stages = nn.ModuleList([biggan.generator.gen_z, *biggan.generator.layers, nn.Identity()])

    def condition(self, labels, z):
        if labels is None:
            raise ConfigError("biggan is class-conditional: the attack needs labels (known or inferred)")
        onehot = F.one_hot(labels.long(), self.num_classes).to(z.dtype)
        return torch.cat([z, self.biggan.embeddings(onehot)], dim=1)

    def run_stage(self, k, h, cond):
        gen = self.biggan.generator
        if k == 0:
            width = gen.config.channel_width
            return gen.gen_z(cond).view(-1, 4, 4, 16 * width).permute(0, 3, 1, 2).contiguous()
        if k == len(self.stages) - 1:
            x = gen.conv_to_rgb(gen.relu(gen.bn(h, self.truncation)))[:, :3]
            return (torch.tanh(x) + 1) / 2
        layer = gen.layers[k - 1]
        return layer(h, cond, self.truncation) if hasattr(layer, "bn_0") else layer(h)


def from_files(folder: str | Path, truncation: float = 1.0) -> BigGANStages:
    """Build the package's BigGAN from ``folder/config.json`` and load ``folder/pytorch_model.bin`` (tensors only)."""
    try:
        from pytorch_pretrained_biggan import BigGAN, BigGANConfig
    except ImportError as exc:
        raise ConfigError("biggan generators need the optional extra: pip install -e '.[biggan]'") from exc
    folder = Path(folder)
    config_file, weights_file = folder / "config.json", folder / "pytorch_model.bin"
    missing = [str(p) for p in (config_file, weights_file) if not p.is_file()]
    if missing:
        raise ConfigError(f"BigGAN weights missing: {', '.join(missing)} (see giabench/attacks/generators/biggan.py "
                          "for where to get them; nothing is downloaded at run time)")
    net = BigGAN(BigGANConfig.from_json_file(str(config_file)))
    try:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # a file that is not a tensor archive, or one for another size
        raise ConfigError(f"BigGAN weights {weights_file}: cannot load them ({type(exc).__name__}: {exc})") from exc
    net.eval().requires_grad_(False)
    return BigGANStages(net, truncation).eval()


def load_biggan(name: str) -> BigGANStages:
    return from_files(weights_dir() / name)
