"""Generator checkpoints: ``NAME.pt`` holds the generator's state dict (floating tensors stored as float16) and
``NAME.json`` its architecture, training config and the sha256 of the ``.pt`` file. Loading checks the checksum,
reads tensors only (``torch.load(weights_only=True)``) and names the field of a bad metadata file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from giabench.attacks.generators.dcgan import DCGANGenerator
from giabench.errors import ConfigError
from giabench.models import read_tensors

ARCHITECTURES = {"dcgan": DCGANGenerator}


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save(generator: DCGANGenerator, path: str | Path, training: dict, extra: dict | None = None) -> dict:
    """Write ``path`` (.pt) and its ``.json``; returns the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
             for k, v in generator.state_dict().items()}
    torch.save(state, path)
    meta = {"architecture": "dcgan", "shape": list(generator.shape), "latent_dim": generator.latent_dim,
            "width": training["width"], "training": training, "sha256": sha256(path), **(extra or {})}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def read_meta(path: str | Path) -> dict:
    meta_path = Path(path).with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"generator {meta_path}: cannot read its metadata ({type(exc).__name__})") from exc
    if not isinstance(meta, dict):
        raise ConfigError(f"generator {meta_path}: expected a JSON object")
    for key, kind in (("architecture", str), ("shape", list), ("latent_dim", int), ("width", int), ("sha256", str)):
        if not isinstance(meta.get(key), kind):
            raise ConfigError(f"generator {meta_path}: field {key!r} is missing or not a {kind.__name__}")
    if meta["architecture"] not in ARCHITECTURES:
        raise ConfigError(f"generator {meta_path}: unknown architecture {meta['architecture']!r}")
    return meta


def load(path: str | Path) -> DCGANGenerator:
    """The generator in eval mode with frozen float32 weights."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"generator checkpoint {path}: no such file")
    meta = read_meta(path)
    if sha256(path) != meta["sha256"]:
        raise ConfigError(f"generator checkpoint {path}: sha256 does not match its metadata (corrupt or replaced)")
    state = read_tensors(path, "generator checkpoint")
    net = ARCHITECTURES[meta["architecture"]](tuple(meta["shape"]), meta["latent_dim"], meta["width"])
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ConfigError(f"generator checkpoint {path}: does not fit its architecture") from exc
    net.eval().requires_grad_(False)
    net.meta = meta
    return net
