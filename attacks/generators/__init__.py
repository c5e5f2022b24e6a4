"""Image priors for the generative attacks, by name: ``dcgan-mnist`` and ``dcgan-patches`` (trained on this
project's offline data by ``giabench train-generator`` and shipped in ``weights/``), ``checkpoint:PATH`` (any
checkpoint that command wrote) and ``biggan-deep-128`` / ``-256`` / ``-512`` (the ``pytorch-pretrained-biggan``
package, when its weights are on disk)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from giabench.attacks.generators import checkpoint
from giabench.attacks.generators.staged import StagedGenerator
from giabench.errors import ConfigError

WEIGHTS = Path(__file__).parent / "weights"
SHIPPED = ("dcgan-mnist", "dcgan-patches")
BIGGAN = ("biggan-deep-128", "biggan-deep-256", "biggan-deep-512")

__all__ = ["StagedGenerator", "load", "names"]


def names() -> list[str]:
    return [*SHIPPED, *BIGGAN, "checkpoint:PATH"]


def shape_of(name: str) -> tuple[int, ...]:
    """C x H x W of a shipped generator's images, from its training record."""
    return tuple(json.loads((WEIGHTS / f"{name}.json").read_text(encoding="utf-8"))["shape"])


@lru_cache(maxsize=4)
def load(name: str) -> StagedGenerator:
    """The generator in eval mode, frozen (attacks that fine-tune it copy it first)."""
    if name in SHIPPED:
        return checkpoint.load(WEIGHTS / f"{name}.pt")
    if name.startswith("checkpoint:"):
        return checkpoint.load(name.split(":", 1)[1])
    if name in BIGGAN:
        from giabench.attacks.generators.biggan import load_biggan

        return load_biggan(name)
    raise ConfigError(f"unknown generator {name!r}; known: {', '.join(names())}")
