"""Threat models A-H of the SoK on gradient inversion (Carletti et al., USENIX Security 2025), as capabilities.

Every threat model sees the model updates. The letters add knowledge or power; an attack declares what it needs and
the harness refuses a cell whose threat model does not grant it, naming the missing capability. We count the client's
labels as "basic knowledge" (B), as the SoK places Inverting Gradients, which assumes them, in B.
"""

from __future__ import annotations

from giabench.errors import ConfigError

CAPABILITIES = {
    "priors": "basic knowledge of images (total variation, pixel range)",
    "labels": "the client's labels",
    "training": "training details (learning rate, local batch size, epochs)",
    "surrogate-data": "surrogate data from the client's distribution",
    "bn-statistics": "the client's data statistics (batch-norm statistics)",
    "modify-model": "an active server that modifies the broadcast model",
    "client-selection": "choosing clients or adding Sybils",
}

_B = {"priors", "labels"}
_C = _B | {"training"}
_F = _C | {"modify-model"}
THREAT_MODELS: dict[str, tuple[str, frozenset[str]]] = {
    "A": ("Eavesdropper", frozenset()),
    "B": ("Informed Eavesdropper", frozenset(_B)),
    "C": ("Parameter-Aware Eavesdropper", frozenset(_C)),
    "D": ("Data-Enhanced Eavesdropper", frozenset(_C | {"surrogate-data"})),
    "E": ("Statistical-Informed Eavesdropper", frozenset(_C | {"surrogate-data", "bn-statistics"})),
    "F": ("Active Manipulator", frozenset(_F)),
    "G": ("Data-Enhanced Manipulator", frozenset(_F | {"surrogate-data"})),
    "H": ("Active Client Manipulator", frozenset(_F | {"surrogate-data", "client-selection"})),
}


def minimal(needs: set[str]) -> str:
    """The first letter whose capabilities cover ``needs``."""
    for letter, (_, granted) in THREAT_MODELS.items():
        if needs <= granted:
            return letter
    raise ConfigError(f"no threat model grants {', '.join(sorted(needs))}")


def check(letter: str, needs: set[str], attack: str) -> None:
    """Refuse an attack whose needs exceed threat model ``letter``, naming what is missing."""
    if letter not in THREAT_MODELS:
        raise ConfigError(f"threat_model must be one of {', '.join(THREAT_MODELS)}, got {letter!r}")
    name, granted = THREAT_MODELS[letter]
    missing = sorted(needs - granted)
    if missing:
        what = "; ".join(f"{m} ({CAPABILITIES[m]})" for m in missing)
        raise ConfigError(f"attack {attack} needs {what}, which threat model {letter} ({name}) does not grant; "
                          f"the weakest that does is {minimal(needs)}")


def grants(letter: str, capability: str) -> bool:
    return capability in THREAT_MODELS[letter][1]
