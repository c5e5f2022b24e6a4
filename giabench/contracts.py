"""The two contracts everything else hangs on: what an attack receives, returns and says about itself, and what a
defended client does on the wire and in training.

An attack sees a ``ServerView`` (the broadcast model, the message on the wire, the defense's public side information
and the data shape; labels only when the cell's threat model grants them) and the defended client's ``simulate``, its
differentiable model of the message. It returns a ``Reconstruction``. It also describes itself, so that the audit and
the report need no list of attacks: a ``title``, its family, threat-model ``needs``, its documented ``parameters``
(checked by ``check`` when a suite is loaded), its parameters at each audit level (``for_audit``), the hyperparameters
``giabench tune`` may search (``search_space``) and whether it applies to a model, protocol and batch size
(``applies``).

A defense is a ``Client`` (Kerckhoffs: the mechanism and its public parameters are known to the server, the fresh
randomness is not):
- ``share(x, y, generator)``: the message that really goes on the wire, drawing fresh noise from ``generator``;
- ``simulate(x, y)``: the attacker's differentiable model of ``share`` (the same transform, no fresh noise; the
  client's private epoch orders are not known, so the data is visited in order, or in the attacker's ``orders``);
- ``public``: what the server legitimately knows after receiving the message (a sparsity mask, a noise scale ...);
- ``cost()``: bytes uploaded, and where the mechanism is differentially private epsilon, delta and the adjacency they
  hold for (a non-empty ``adjacency`` is what marks a DP mechanism), composed over every release the client made;
- ``federation``: its server side over training rounds (``giabench.federation``), which a defense with server state
  (a running estimator, a score vector, a hypernetwork) replaces;
- ``parameters`` and ``check(params, protocol, batch_size)``: each parameter documented with its range, and every
  value checked once, with the protocol and batch size it will serve, before a constructor sees it
  (``giabench.components``), so a constructor only builds;
- ``strength``: its strength axis (``Axis``), the settings a frontier sweeps from weakest to strongest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from giabench import checks
from giabench.checks import Param
from giabench.errors import ConfigError
from giabench.federation import Federation
from giabench.privacy import Release
from giabench.protocols import GradRule, Orders, Protocol, Update
from giabench.search import Dimension

if TYPE_CHECKING:
    from giabench.components import Component

Simulate = Callable[..., Update]  # simulate(x, y) or, for a client that honours them, simulate(x, y, orders=...)
Progress = Callable[[int], None]
AUDIT_LEVELS = ("quick", "standard", "thorough")
UNFILLED = 0.5  # the pixel value of a slot an analytic attack could not fill: the constant guess of least worst case


@dataclass
class ServerView:
    model: torch.nn.Module
    protocol: Protocol
    message: Update
    public: dict
    shape: tuple[int, ...]  # C x H x W; for text (sequence length, vocabulary size)
    num_classes: int
    batch_size: int
    labels: torch.Tensor | None = None  # granted only when the threat model includes the labels
    surrogate: torch.Tensor | None = None  # images of the client's distribution, when the threat model grants them
    #: per batch-norm layer, the mean and variance of its input on the client's batch at the broadcast weights
    #: (``Protocol.batch_statistics``), when the threat model grants ``bn-statistics``
    bn_statistics: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class Reconstruction:
    images: torch.Tensor | None  # B x C x H x W in [0, 1] (text: B x n token ids); None for label-only attacks
    labels: torch.Tensor | None
    iterations: int  # gradient evaluations spent (the budget unit)
    trace: list[float] = field(default_factory=list)  # objective, sampled along the run
    extra: dict = field(default_factory=dict)
    recovered: torch.Tensor | None = None  # B bools: slots the attack filled (None: every slot is an attempt)


class Attack:
    """Base class. Subclasses set the metadata below and implement ``reconstruct``.

    ``needs`` lists capabilities of ``giabench.threats`` the attack always uses; ``requirements`` adds those its
    parameters imply (``parameter_needs``) and the training details needed to simulate local steps. ``parameters``
    documents each constructor keyword (one line and its range, ``giabench describe``)."""

    family = "optimization"  # optimization | generative | analytic | label
    title = ""  # the name a report uses (default: the registered name)
    needs: tuple[str, ...] = ()
    assumes = ""  # one line for `giabench list attacks`
    budget_unit = "iterations"
    closed_form: bool | None = None  # the gate judges a closed-form result exactly; None: by family (analytic, label)
    modalities: tuple[str, ...] = ("image",)  # the data it reconstructs: image, text
    parameters: dict[str, Param] = {}

    @classmethod
    def check(cls, params: dict) -> None:
        """Refuse values outside their declared ranges; an attack with rules that tie parameters together adds
        them. ``params`` are resolved (every keyword present, typed)."""
        checks.declared(f"attack {getattr(cls, 'registered_name', cls.__name__)}", cls.parameters, params)

    @classmethod
    def for_audit(cls, level: str, shape: tuple[int, ...]) -> dict:
        """The attack's parameters in an audit at ``level`` (one of ``AUDIT_LEVELS``) of images of ``shape``; raises
        ``NotApplicable`` with the reason when it sits that audit out. Default: its defaults at every level."""
        return {}

    @classmethod
    def search_space(cls, shape: tuple[int, ...]) -> dict[str, Dimension]:
        """The hyperparameters ``giabench tune`` searches for images of ``shape``, each with its range
        (``giabench.search``): only those that leave the budget unchanged. Default: none (the attack is not tuned)."""
        return {}

    def applies(self, model: nn.Module, shape: tuple[int, ...], protocol: str, batch_size: int) -> str | None:
        """Why the attack cannot run on ``model`` (the bare network, taking ``shape`` images) under ``protocol`` at
        ``batch_size``; None when it can. Only what is known before any data is seen: the reconstruction may still
        find the message itself not applicable."""
        return None

    def parameter_needs(self) -> set[str]:
        """Capabilities the attack's parameters imply (known labels, a label method's surrogate data ...)."""
        return set()

    def requirements(self, protocol: str) -> set[str]:
        needs = set(self.needs) | self.parameter_needs()
        if protocol != "fedsgd":
            needs.add("training")
        return needs

    def planned_budget(self) -> int | None:
        """Evaluations of the update the attack will spend (for progress bars; ``None`` when unknown up front)."""
        iterations = getattr(self, "iterations", None)
        return iterations * getattr(self, "restarts", 1) if isinstance(iterations, int) else None

    def describe(self) -> str:
        """The attack as a sentence names it: its title and, when known, its budget."""
        title = self.title or getattr(self, "registered_name", type(self).__name__)
        budget = self.planned_budget()
        return f"{title}, {budget:,} {self.budget_unit}" if budget and budget > 1 else title

    def prepare(self, model: torch.nn.Module, shape: tuple[int, int, int], surrogate: torch.Tensor | None,
                generator: torch.Generator, batch_size: int | None = None) -> torch.nn.Module:
        """The model the server broadcasts; only active (malicious-server) attacks change it. ``batch_size``: the
        client's, a training detail every threat model from C on grants (None where it is not known)."""
        return model

    def reconstruct(self, view: ServerView, simulate: Simulate, generator: torch.Generator,
                    progress: Progress | None = None) -> Reconstruction:
        raise NotImplementedError


@dataclass(frozen=True)
class Axis:
    """A defense's strength axis: the ``points`` a frontier sweeps (partial parameter settings), weakest first;
    ``name`` says what moves (a parameter, or a rule tying several)."""

    name: str
    points: tuple[dict, ...]

    @classmethod
    def of(cls, parameter: str, *values) -> Axis:
        """The axis of one parameter through ``values``, weakest first."""
        return cls(parameter, tuple({parameter: v} for v in values))

    def label(self, params: dict) -> str:
        """Where ``params`` sit on the axis: the moving values, e.g. ``noise_multiplier=1.0``."""
        keys = sorted({k for point in self.points for k in point})
        return ", ".join(f"{k}={params.get(k)}" for k in keys)


class Client:
    """The undefended client: shares the protocol's update as float32. ``vmappable``: ``simulate`` can run under
    ``torch.func.vmap`` (over an attacker's restarts); False where it trains with autograd inside."""

    vmappable = True
    federation: type[Federation] = Federation  # the server side over training rounds
    #: whether the client's training goes through ``update`` with its epoch orders (False where it runs its own loop
    #: or splits the batch: a shuffling protocol is then refused rather than silently run in order)
    shuffles = True

    parameters: dict[str, Param] = {}
    strength: Axis | None = None  # None: no strength to sweep (the undefended client, a defense without a knob)
    modalities: tuple[str, ...] = ("image", "text")  # the data it defends (a transform of any update serves both)

    def __init__(self, protocol: Protocol):
        self.protocol = protocol
        self.public: dict = {}
        self.releases: list[Release] = []  # DP releases of every share() so far (empty: not a DP mechanism)

    @classmethod
    def check(cls, params: dict, protocol: Component, batch_size: int) -> None:
        """Refuse values outside their declared ranges, and a protocol or batch size the defense cannot serve, before
        any cell runs; a defense with rules that tie parameters together, or with more protocol needs, adds them."""
        name = getattr(cls, "registered_name", cls.__name__)
        checks.declared(f"defense {name}", cls.parameters, params)
        if not cls.shuffles and protocol.params.get("shuffle", False):
            raise ConfigError(f"defense {name} trains in a fixed order: protocol fedavg with shuffle: true is not "
                              "modelled for it", field="shuffle")

    @classmethod
    def round_params(cls, params: dict, round_index: int) -> dict:
        """The client's parameters in training round ``round_index`` (a defense with per-round public randomness
        derives it here); the same in every round by default."""
        return params

    def rule(self, generator: torch.Generator | None) -> GradRule | None:
        """The per-step gradient rule (``None``: the plain mean gradient); ``generator=None`` means simulate."""
        return None

    def transform(self, update: Update, generator: torch.Generator | None) -> Update:
        """Post-processing of the finished update; ``generator=None`` means simulate."""
        return update

    def update(self, x: torch.Tensor, y: torch.Tensor, rule: GradRule | None, orders: Orders | None = None) -> Update:
        """The update before post-processing (secure aggregation overrides it to sum several clients)."""
        return self.protocol.update(x, y, rule, orders)

    def account(self, x: torch.Tensor) -> None:
        """Record in ``releases`` the DP releases one ``share(x, ...)`` makes (only ``x``'s shape counts); called by
        ``share``, and by a server that attacks an update a real client computed (the Flower integration)."""

    def observe(self, message: Update) -> None:
        """Read the public state of a message this client really sent into ``public`` (a server that attacks an
        update it did not compute itself; ``share`` sets it otherwise)."""

    def share(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Update:
        self.account(x)
        rule = self.rule(generator)
        update = self.update(x.detach(), y, rule, self.protocol.client_orders(x.shape[0], generator))
        return {k: v.detach() for k, v in self.transform(update, generator).items()}

    def simulate(self, x: torch.Tensor, y: torch.Tensor, orders: Orders | None = None) -> Update:
        return self.transform(self.update(x, y, self.rule(None), orders), None)

    def decode(self, message: Update) -> Update:
        """The server's estimate of the client's update from its message (the federation averages these)."""
        return message

    def numel(self) -> int:
        return sum(p.numel() for p in self.protocol.params.values())

    def value_bytes(self) -> int:
        """Bytes of one shared value: the weights' element size (4 for float32, 8 under ``--dtype float64``)."""
        return next(iter(self.protocol.params.values())).element_size() if self.protocol.params else 4

    def cost(self) -> dict:
        return {"epsilon": math.inf, "delta": 0.0, "adjacency": "", "bytes": self.value_bytes() * self.numel()}


def is_private(cost: dict) -> bool:
    """Whether a cost comes from a differentially private mechanism: an accountant stated its adjacency."""
    return bool(cost.get("adjacency"))
