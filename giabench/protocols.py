"""Federated protocols as pure functions of (parameters, data), differentiable in the data.

FedSGD (McMahan et al., AISTATS 2017, "FedSGD"): the client sends one gradient,
    u = grad_w (1/B) sum_i CE(f_w(x_i), y_i).
FedAvg: the client runs E local epochs of SGD over minibatches of size b with step size eta and sends
    u = w_0 - w_K,   w_{k+1} = w_k - eta * g(w_k, batch_k),
which for one step equals eta times the FedSGD gradient. Each epoch visits the data in the given order, or, with
``shuffle``, in a fresh permutation per epoch drawn from the client's private generator (the server knows that it
shuffles, never the permutations). ``g`` is the per-step gradient rule: the plain mean gradient,
or a privatized one (DP-SGD) that a defense supplies. Built on ``torch.func.functional_call`` so the model object is
never mutated and an attacker can differentiate the whole update with respect to dummy inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from giabench import checks
from giabench.registry import protocol, protocols

Update = dict[str, torch.Tensor]
Orders = list[torch.Tensor]  # per epoch, the row indices visited in sequence
GradRule = Callable[["Protocol", Update, torch.Tensor, torch.Tensor], Update]

#: Largest batch x parameters for which per-sample gradients are vmapped on CPU; past it one gradient per sample is
#: faster, the vmapped convolutions' per-sample weight gradients becoming grouped convolutions
#: (benchmarks/per_sample_clipping.py, 1 thread, loop time / vmap time for the client and the attacker): lenet B=32
#: (B x P = 0.5M) 5.4 / 4.7, convnet16 B=32 (6.0M) 1.0 / 1.2, convnet64 B=8 (23M) 0.9 / 1.0, B=32 0.7 / 0.7,
#: resnet18 B=8 (89M) 0.7 / 0.7.
CPU_VMAP_SAMPLE_FLOATS = 8_000_000


class Protocol:
    """Binds a model to a local training rule. ``params`` are the broadcast weights (the attacker knows them)."""

    name = "protocol"

    @staticmethod
    def check(**params) -> None:
        """Refuse bad parameter values before any model exists (suite loading)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        #: the trainable weights, the ones an update holds (a LoRA model freezes all but its adapters)
        self.params: Update = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
        self.buffers: Update = {k: v.detach() for k, v in model.named_buffers()}
        self.running_stats = {f"{name}.{stat}" for name, module in model.named_modules()
                              if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                              for stat in ("running_mean", "running_var", "num_batches_tracked")}

    def loss(self, params: Update, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy; ``y`` is class indices or a (soft) label distribution."""
        logits = functional_call(self.model, (params, self.call_buffers()), (x,))
        if y.dtype.is_floating_point:
            return torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, y)

    def call_buffers(self) -> Update:
        """The buffers for one forward pass. In train mode batch norm normalizes by the batch's own statistics and
        would update its running ones: those are passed as None, so the broadcast model's statistics never change
        and the pass holds no in-place write (it can be vmapped over samples or restarts)."""
        if not self.model.training:
            return self.buffers
        return {k: None if k in self.running_stats else v for k, v in self.buffers.items()}

    def gradient(self, params: Update, x: torch.Tensor, y: torch.Tensor) -> Update:
        """The mean gradient over the batch (``torch.func.grad``, so an attacker can vmap it over restarts);
        differentiable in the inputs and the weights when they require grad."""
        return grad(self.loss)(params, x, y)

    @property
    def vmap_exact(self) -> bool:
        """Whether second derivatives through a vmapped pass are exact. Not with batch norm in train mode: torch's
        batching rule for its double backward is off by about 3e-4 relative in float64 against central finite
        differences, where the plain pass agrees to 1e-8 (measured on a tanh ConvNet)."""
        return not (self.model.training and self.running_stats)

    def vmap_pays(self, copies: int, cpu_limit: float) -> bool:
        """Whether ``copies`` passes (samples, restarts) run vmapped together: exact (``vmap_exact``) and worth it, on
        CPU only while copies x parameters stays at most ``cpu_limit`` floats (past it, each measured slower than one
        pass at a time: see the limits), elsewhere always. It depends only on the device, the model and ``copies``,
        so results stay reproducible from their configuration and numerics settings."""
        on_cpu = next(iter(self.params.values())).device.type == "cpu"
        size = copies * sum(v.numel() for v in self.params.values())
        return self.vmap_exact and (not on_cpu or size <= cpu_limit)

    def per_sample_gradients(self, params: Update, x: torch.Tensor, y: torch.Tensor) -> Update:
        """g_i = grad_w CE(f_w(x_i), y_i) for every sample i, each tensor with a leading batch dimension;
        differentiable in ``x``, as ``gradient`` is. All at once (``torch.func.vmap`` of ``torch.func.grad``) where
        that is exact and, on CPU, faster (``vmap_pays`` with ``CPU_VMAP_SAMPLE_FLOATS``), else one sample at a time;
        each sample is a batch of one either way."""
        if not self.vmap_pays(x.shape[0], CPU_VMAP_SAMPLE_FLOATS):
            looped = [self.gradient(params, x[i:i + 1], y[i:i + 1]) for i in range(x.shape[0])]
            return {k: torch.stack([g[k] for g in looped]) for k in params}
        return vmap(grad(lambda p, xi, yi: self.loss(p, xi[None], yi[None])), in_dims=(None, 0, 0))(params, x, y)

    def batch_statistics(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per batch-norm layer of the broadcast model run on ``x``: the per-channel mean and biased variance of the
        layer's input, mu_l = E_{n,h,w} a_l and sigma^2_l = E (a_l - mu_l)^2 (what a train-mode batch norm normalizes
        by); differentiable in ``x``. The running statistics are left as they are."""
        stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def record(name):
            def hook(_module, inputs):
                if name not in stats:  # the first pass only (a module called twice keeps its first input)
                    dims = [d for d in range(inputs[0].dim()) if d != 1]
                    stats[name] = (inputs[0].mean(dim=dims), inputs[0].var(dim=dims, unbiased=False))
            return hook

        hooks = [module.register_forward_pre_hook(record(name)) for name, module in self.model.named_modules()
                 if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
        try:
            if hooks:
                functional_call(self.model, (self.params, self.call_buffers()), (x,))
        finally:
            for handle in hooks:
                handle.remove()
        return stats

    def local_steps(self, x: torch.Tensor) -> int:
        """How many gradient evaluations one update takes (the accountant's step count)."""
        raise NotImplementedError

    def client_orders(self, n: int, generator: torch.Generator) -> Orders | None:
        """The order in which the client visits its ``n`` samples in each epoch, drawn from its private generator;
        ``None``: the given order in every epoch."""
        return None

    def update(self, x: torch.Tensor, y: torch.Tensor, rule: GradRule | None = None,
               orders: Orders | None = None) -> Update:
        """The update on ``(x, y)``; ``orders[e]`` indexes the rows of ``x`` epoch ``e`` visits, in sequence (a
        permutation, or an attacker's own copies of the data for that epoch), ``None`` meaning all rows in order."""
        raise NotImplementedError


def mean_gradient(protocol: Protocol, params: Update, x: torch.Tensor, y: torch.Tensor) -> Update:
    return protocol.gradient(params, x, y)


@protocol("fedsgd")
class FedSGD(Protocol):
    """One gradient of the mean loss over the client's batch."""

    name = "fedsgd"

    def local_steps(self, x):
        return 1

    def update(self, x, y, rule=None, orders=None):
        if orders is not None:
            raise ValueError("protocol fedsgd takes one gradient of the whole batch: it has no epoch orders")
        return (rule or mean_gradient)(self, self.params, x, y)


def fedavg_steps(batch: int, epochs: int, local_batch: int) -> int:
    """SGD steps in one FedAvg update: epochs x ceil(B / b), b = 0 meaning the whole batch."""
    return epochs * -(-batch // (local_batch or batch))


@protocol("fedavg")
class FedAvg(Protocol):
    """``epochs`` passes of SGD with step ``lr`` over minibatches of ``batch_size``, in the given order or (``shuffle``)
    a fresh private permutation per epoch; the update is ``w_0 - w_K``."""

    name = "fedavg"

    def __init__(self, model, *, epochs: int = 1, batch_size: int = 0, lr: float = 0.1, shuffle: bool = False):
        super().__init__(model)
        self.check(epochs=epochs, batch_size=batch_size, lr=lr, shuffle=shuffle)
        self.epochs, self.batch_size, self.lr, self.shuffle = epochs, batch_size, lr, shuffle

    @staticmethod
    def check(*, epochs: int, batch_size: int, lr: float, shuffle: bool = False) -> None:
        checks.at_least("protocol fedavg", 1, epochs=epochs)
        checks.require("protocol fedavg", "batch_size", batch_size, batch_size >= 0, ">= 0 (0: the whole batch)")
        checks.positive("protocol fedavg", lr=lr)

    def _batches(self, n: int) -> list[slice]:
        b = self.batch_size or n
        return [slice(i, min(i + b, n)) for i in range(0, n, b)]

    def local_steps(self, x):
        return fedavg_steps(x.shape[0], self.epochs, self.batch_size)

    def client_orders(self, n, generator):
        if not self.shuffle:
            return None
        return [torch.randperm(n, generator=generator) for _ in range(self.epochs)]

    def update(self, x, y, rule=None, orders=None):
        rule = rule or mean_gradient
        if orders is not None and len(orders) != self.epochs:
            raise ValueError(f"protocol fedavg runs {self.epochs} epochs, got orders for {len(orders)}")
        params = dict(self.params)
        for epoch in range(self.epochs):
            order = None if orders is None else orders[epoch].to(x.device)
            for part in self._batches(x.shape[0] if order is None else order.numel()):
                rows = part if order is None else order[part]
                grads = rule(self, params, x[rows], y[rows])
                params = {k: params[k] - self.lr * grads[k] for k in params}
        return {k: self.params[k] - params[k] for k in params}


def resolve_params(name: str, params: dict, where: str) -> dict:
    """A protocol's parameters with defaults filled, typed and checked (before any model exists)."""
    resolved = protocols.resolve(name, params, where)
    protocols.get(name).check(**resolved)
    return resolved


def build(name: str, params: dict, model: torch.nn.Module) -> Protocol:
    return protocols.get(name)(model, **params)
