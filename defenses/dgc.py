"""Deep Gradient Compression (Lin, Han, Mao, Wang, Dally, ICLR 2018, arXiv 1712.01887): top-k sparsification whose
unsent remainder stays on the client, with momentum correction, momentum factor masking, local gradient clipping and
warm-up of the sparsity.

Each round t a client computes its gradient g_t (clipped to norm ``clip`` when set), then (Sec. 3.2, eqs. 5-6)
    u_t = m u_{t-1} + (1 - d) g_t      (momentum correction: the momentum is kept locally, not on the server;
                                        dampening d = 0 in the paper, d = m makes u an average whose step matches
                                        plain SGD at the same learning rate)
    v_t = v_{t-1} + u_t                (local accumulation of the velocity)
    mask_t = top-k of |v_t| per tensor, k = ceil(density_t |v_t|)
    send v_t * mask_t;   v_t <- v_t * (1 - mask_t);   u_t <- u_t * (1 - mask_t)   (momentum factor masking)
and the server steps w <- w - lr mean_k(sent_k). Warm-up (Sec. 3.3): the density falls exponentially over the first
``warmup`` rounds, density_t = max(density, 4^-(t+1)) (75 %, 93.75 %, 98.4 %, 99.6 % sparsity, then the target).
"""

from __future__ import annotations

import math

import torch

from giabench.checks import Param
from giabench.contracts import Axis, Client
from giabench.defenses.mechanisms import clip_update, top_k_mask
from giabench.errors import ConfigError
from giabench.federation import Federation
from giabench.registry import defense

Update = dict[str, torch.Tensor]


def round_density(density: float, warmup: int, index: int) -> float:
    """The share of each tensor's entries sent in round ``index`` (0-based) under exponential warm-up."""
    return max(density, 0.25 ** (index + 1)) if index < warmup else density


class DGCFederation(Federation):
    """Each client keeps its momentum u and residual v across rounds (a persistent state per client), and each round
    has its warm-up density."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.states: list[tuple[Update, Update] | None] = [None] * self.clients

    def client(self, k, index, protocol):
        node = self.client_type(protocol, **self.params)
        node.resume(self.states, k, index)
        return node


@defense("dgc")
class DeepGradientCompression(Client):
    """DGC on a FedSGD client. In a cell the attacked round is round ``history`` of a client whose earlier rounds
    computed their gradient on the same private batch at the same broadcast model (a client whose local data is this
    batch); the server has seen every earlier message, so the masks of all rounds are public and the adaptive
    attacker replays the recursion above on g(x_hat) exactly: the message is a known per-entry multiple of g."""

    federation = DGCFederation
    strength = Axis.of("density", 0.1, 0.01, 0.001, 0.0001)
    parameters = {
        "density": Param("the share of each tensor's entries sent once warm-up is over (0.001: 99.9 % sparsity)",
                         above=0, at_most=1),
        "momentum": Param("m, the momentum kept on the client (momentum correction)", at_least=0, below=1),
        "dampening": Param("d: the gradient enters the momentum as (1 - d) g (0 in the paper; as torch.optim.SGD)",
                           at_least=0, below=1),
        "clip": Param("local gradient clipping: the L2 bound of each round's gradient (0: none)", at_least=0),
        "warmup": Param("rounds over which the density falls exponentially to its target", at_least=0),
        "history": Param("earlier rounds of this client before the attacked one, in a cell", at_least=0),
    }

    def __init__(self, protocol, *, density: float = 0.001, momentum: float = 0.9, dampening: float = 0.0,
                 clip: float = 0.0, warmup: int = 4, history: int = 0):
        super().__init__(protocol)
        self.density, self.momentum, self.dampening, self.clip = density, momentum, dampening, clip
        self.warmup, self.history = warmup, history
        self.first_round = 0
        self.store: tuple[list, int] | None = None  # (the federation's states, this client's index)

    @classmethod
    def check(cls, params, protocol, batch_size):
        super().check(params, protocol, batch_size)
        if protocol.name != "fedsgd":
            raise ConfigError("defense dgc compresses each round's gradient: use protocol fedsgd", field="protocol")

    def resume(self, states: list, k: int, index: int) -> None:
        """Train as client ``k`` in round ``index`` of a federation, continuing from (and saving) its state."""
        self.store, self.first_round, self.history = (states, k), index, 0

    def transform(self, update, generator):
        if generator is not None:
            return self._send(update)
        masks = self.public.get("masks")
        if masks is None or len(masks) != self.history + 1:
            raise RuntimeError("dgc: simulate() needs the masks of every round of a shared message; call share() "
                               "first")
        momentum = {k: torch.zeros_like(g) for k, g in update.items()}
        residual = dict(momentum)
        gradient = self._gradient(update)
        for mask in masks:
            sent, momentum, residual = self._release(*self._accumulate(gradient, momentum, residual), mask)
        return sent

    def _send(self, update: Update) -> Update:
        """The real rounds: from the stored state (or zeros), ``history + 1`` rounds on this gradient; the masks of
        every round become public."""
        states, k = self.store if self.store else (None, None)
        state = states[k] if states is not None else None
        momentum, residual = state if state else ({key: torch.zeros_like(g) for key, g in update.items()},) * 2
        gradient = self._gradient(update)
        masks = []
        for t in range(self.history + 1):
            density = round_density(self.density, self.warmup, self.first_round + t)
            momentum, residual = self._accumulate(gradient, momentum, residual)
            masks.append({key: top_k_mask(v, math.ceil(density * v.numel())) for key, v in residual.items()})
            sent, momentum, residual = self._release(momentum, residual, masks[-1])
        if states is not None:
            states[k] = (momentum, residual)
        self.public["masks"] = masks
        self.public["density"] = round_density(self.density, self.warmup, self.first_round + self.history)
        return sent

    def _gradient(self, update: Update) -> Update:
        """g_t: the round's update clipped to L2 norm ``clip`` (0: as it is)."""
        return clip_update(update, self.clip) if self.clip else update

    def _accumulate(self, gradient: Update, momentum: Update, residual: Update) -> tuple[Update, Update]:
        """Eqs. 5-6: u <- m u + (1 - d) g, then v <- v + u."""
        momentum = {key: self.momentum * momentum[key] + (1 - self.dampening) * gradient[key] for key in gradient}
        return momentum, {key: residual[key] + momentum[key] for key in gradient}

    @staticmethod
    def _release(momentum: Update, residual: Update, mask: Update) -> tuple[Update, Update, Update]:
        """(sent, u, v): send v * mask; keep u and v only where nothing was sent (momentum factor masking)."""
        keep = {key: 1 - mask[key] for key in mask}
        return ({key: residual[key] * mask[key] for key in mask}, {key: momentum[key] * keep[key] for key in mask},
                {key: residual[key] * keep[key] for key in mask})

    def observe(self, message):
        """A message the server did not compute: its support is the last round's mask (earlier rounds' masks come
        from the messages the server saw before; without them only ``history`` 0 can be simulated)."""
        support = {k: (v != 0).to(v.dtype) for k, v in message.items()}
        self.public["masks"] = list(self.public.get("masks", [])[:-1]) + [support]

    def cost(self):
        density = self.public.get("density", round_density(self.density, self.warmup, self.first_round))
        kept = sum(math.ceil(density * p.numel()) for p in self.protocol.params.values())
        return {**super().cost(), "bytes": (self.value_bytes() + 4) * kept}  # a value + an int32 index
