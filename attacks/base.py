"""What an attack receives and returns.

An attack sees a ``ServerView`` (the broadcast model, the message on the wire, the defense's public side information and
the data shape; labels only when the cell's threat model grants them) and the defended client's ``simulate``, its
differentiable model of the message. It returns a ``Reconstruction``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from giabench.protocols import Protocol, Update

Simulate = Callable[[torch.Tensor, torch.Tensor], Update]
Progress = Callable[[int], None]


@dataclass
class ServerView:
    model: torch.nn.Module
    protocol: Protocol
    message: Update
    public: dict
    shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    labels: torch.Tensor | None = None  # granted only when the threat model includes the labels
    surrogate: torch.Tensor | None = None  # images of the client's distribution, when the threat model grants them


@dataclass
class Reconstruction:
    images: torch.Tensor | None  # B x C x H x W in [0, 1]; None for label-only attacks
    labels: torch.Tensor | None
    iterations: int  # gradient evaluations spent (the budget unit)
    trace: list[float] = field(default_factory=list)  # objective, sampled along the run
    extra: dict = field(default_factory=dict)
    recovered: torch.Tensor | None = None  # B bools: slots the attack filled (None: every slot is an attempt)


UNFILLED = 0.5  # the pixel value of a slot an analytic attack could not fill: the constant guess of least worst case


class Attack:
    """Base class. Subclasses set the metadata below and implement ``reconstruct``.

    ``needs`` lists capabilities of ``giabench.threats`` the attack always uses; ``requirements`` adds those its
    parameters imply (known labels, a label method's own needs, the training details to simulate local steps)."""

    family = "optimization"  # optimization | generative | analytic | label
    needs: tuple[str, ...] = ()
    assumes = ""  # one line for `giabench list attacks`
    budget_unit = "iterations"

    def requirements(self, protocol: str) -> set[str]:
        from giabench.attacks.labels import requirements as label_needs

        needs = set(self.needs)
        labels = getattr(self, "labels", "")
        if labels == "known":
            needs.add("labels")
        elif labels.startswith("inferred"):
            needs |= label_needs(labels)
        if protocol != "fedsgd":
            needs.add("training")
        return needs

    def planned_budget(self) -> int | None:
        """Evaluations of the update the attack will spend (for progress bars; ``None`` when unknown up front)."""
        iterations = getattr(self, "iterations", None)
        return iterations * getattr(self, "restarts", 1) if isinstance(iterations, int) else None

    def prepare(self, model: torch.nn.Module, shape: tuple[int, int, int], surrogate: torch.Tensor | None,
                generator: torch.Generator) -> torch.nn.Module:
        """The model the server broadcasts; only active (malicious-server) attacks change it."""
        return model

    def reconstruct(self, view: ServerView, simulate: Simulate, generator: torch.Generator,
                    progress: Progress | None = None) -> Reconstruction:
        raise NotImplementedError
