"""R-GAP, the recursive gradient attack (Zhu & Blaschko, "R-GAP: Recursive Gradient Attack on Privacy", ICLR 2021).

For a chain of layers z_i = W_i x_i (+ b_i), x_{i+1} = sigma(z_i) ending in a linear classifier, one sample's
gradients satisfy dL/dW_i = k_i x_i^T with k_i = dL/dz_i = (W_{i+1}^T k_{i+1}) * sigma'(z_i)  (Sec. 3.1). Going from
the top down:
    top (cross-entropy, bias):  k = dL/db,  x_top = sum_c k_c dL/dW_c / sum_c k_c^2   (dL/dW_c = k_c x_top);
    layer i: z_i = sigma^-1(x_{i+1}), k_i as above, and x_i solves the stacked linear system            (Eq. 7)
        [ W_i ] x_i = [ z_i - b_i ]       forward constraints (a convolution written as a matrix),
        [ K_i ]       [ dL/dW_i   ]       gradient constraints (the weight gradient is linear in x_i given k_i),
in least squares. Zero padding is built in: the unknowns are the unpadded input. Layer i is recoverable iff
rank([W_i; K_i]) = dim(x_i) (Sec. 3.2); we compute that rank from the singular values (relative tolerance
``RANK_TOL``), report it for every layer, and refuse (not applicable) where it fails. Activations must be invertible:
LeakyReLU, sigmoid, tanh or none.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vjp
from torch.func import jacfwd as _jacfwd

from giabench.attacks import labels as label_methods
from giabench.attacks.base import LABELS, Attack
from giabench.contracts import Reconstruction
from giabench.errors import ConfigError, NotApplicable
from giabench.registry import attack


def jacfwd(function):
    """``torch.func.jacfwd``, without the FutureWarning torch's forward-mode internals raise about their own use of
    ``torch.jit.script`` when first imported (nothing of ours is scripted)."""

    def jacobian(x):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
            return _jacfwd(function)(x)

    return jacobian

ACTIVATIONS = (nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Identity)
RANK_TOL = 1e-6  # singular values below this fraction of the largest count as zero (float32 messages carry ~1e-7)


def activation_inverse(act: nn.Module, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, sigma'(z))`` for ``y = act(z)``."""
    if isinstance(act, nn.LeakyReLU):
        slope = act.negative_slope
        return torch.where(y > 0, y, y / slope), torch.where(y > 0, 1.0, slope).to(y.dtype)
    if isinstance(act, nn.Sigmoid):
        y = y.clamp(1e-12, 1 - 1e-12)
        return torch.log(y / (1 - y)), y * (1 - y)
    if isinstance(act, nn.Tanh):
        y = y.clamp(-1 + 1e-12, 1 - 1e-12)
        return torch.atanh(y), 1 - y ** 2
    return y, torch.ones_like(y)


def layer_map(module: nn.Module):
    """``f(x, W)``: the layer without its bias, linear in x and in W."""
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x.flatten(1), w)
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise NotApplicable(f"rgap: convolution padding {module.padding!r}/{module.padding_mode} is not supported")
    return lambda x, w: F.conv2d(x, w, None, module.stride, module.padding, module.dilation, module.groups)


def blocks(net: nn.Module, shape: tuple[int, int, int]) -> list[tuple[str, nn.Module, nn.Module, torch.Size]]:
    """``(name, layer, activation, input shape)`` per parametrized layer, bottom up. Refuses a network that is not a
    plain chain of convolutions / linear layers and invertible activations (checked by re-running the chain)."""
    chain: list[list] = []
    for name, module in net.named_modules():
        if list(module.children()) or isinstance(module, (nn.Flatten, nn.Dropout)):
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            chain.append([name, module, nn.Identity()])
        elif isinstance(module, ACTIVATIONS) and chain and isinstance(chain[-1][2], nn.Identity):
            chain[-1][2] = module
        else:
            raise NotApplicable(f"rgap: layer {name} ({type(module).__name__}) is not invertible; R-GAP needs a chain "
                                "of convolutions and linear layers with LeakyReLU, sigmoid or tanh (e.g. cnn6, lenet)")
    if not chain or not isinstance(chain[-1][1], nn.Linear) or chain[-1][1].bias is None:
        raise NotApplicable("rgap: the network must end in a linear layer with a bias")
    probe = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, result = probe, []
    with torch.no_grad():
        for name, layer, act in chain:
            result.append((name, layer, act, out.shape))
            out = act(layer(out.flatten(1) if isinstance(layer, nn.Linear) else out))
        if not torch.allclose(out, net(probe), rtol=1e-4, atol=1e-5):
            raise NotApplicable("rgap: the network's forward pass is not the chain of its layers")
    return result


def gradient_normal(layer: nn.Module, k: torch.Tensor, gradient: torch.Tensor,
                    in_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K^T K, K^T vec dL/dW)`` of the gradient constraints K x = vec dL/dW, without forming K.

    Linear: dL/dW = k x^T, so K^T K = |k|^2 I and K^T vec dL/dW = dL/dW^T k. Convolution: dL/dW[o, c] correlates
    k[o] with input channel c alone, so K is block diagonal with one block B per channel, the same for every channel:
    K^T K = I_C (x) B^T B and the channel-c part of K^T vec dL/dW is B^T vec dL/dW[:, c]."""
    if isinstance(layer, nn.Linear):
        n = layer.in_features
        return (k @ k).reshape(()) * torch.eye(n, dtype=k.dtype), (gradient.T @ k.flatten()).view(in_shape)
    channels, side = in_shape[1], in_shape[2:]
    single = torch.zeros(layer.out_channels, 1, *layer.kernel_size, dtype=k.dtype)
    f = layer_map(layer)
    block = jacfwd(lambda x: grad(lambda w: (f(x, w) * k).sum())(single).flatten())(
        torch.zeros(1, 1, *side, dtype=k.dtype)).reshape(single.numel(), -1)
    per_channel = block.T @ gradient.transpose(0, 1).reshape(channels, -1).T
    return torch.block_diag(*[block.T @ block] * channels), per_channel.T.reshape(in_shape)


def solve_layer(layer: nn.Module, weight: torch.Tensor, k: torch.Tensor, target: torch.Tensor,
                gradient: torch.Tensor, in_shape: torch.Size) -> tuple[torch.Tensor | None, dict]:
    """Least-squares x with f(x, W) = target and grad_W <k, f(x, W)> = gradient, through the normal equations
    (A^T A is n x n; an SVD of the tall A costs several times more); returns x (None when rank deficient)
    and the layer's rank report."""
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise NotApplicable("rgap: grouped convolutions are not supported")
    f = layer_map(layer)
    x0 = torch.zeros(in_shape, dtype=weight.dtype)
    forward = jacfwd(lambda x: f(x, weight).flatten())(x0).reshape(-1, x0.numel())
    grad_gram, grad_moment = gradient_normal(layer, k, gradient, in_shape)
    # row scaling: both blocks weigh the same (the exact solution of a consistent system does not change)
    wf, wg = 1 / (forward ** 2).sum().clamp_min(1e-60), 1 / grad_gram.trace().clamp_min(1e-60)
    gram = wf * forward.T @ forward + wg * grad_gram
    moment = wf * forward.T @ target.flatten() + wg * grad_moment.flatten()
    singular = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)
    rank = int((singular > singular[0] * RANK_TOL).sum())
    report = {"unknowns": x0.numel(), "forward_eqs": target.numel(), "gradient_eqs": gradient.numel(), "rank": rank,
              "condition": float(singular[0] / singular[rank - 1]) if rank else float("inf")}
    if rank < x0.numel():
        return None, report
    x = torch.cholesky_solve(moment[:, None], torch.linalg.cholesky(gram)).view(in_shape)
    fit = f(x, weight) - target
    gradient_fit = grad(lambda w: (f(x, w) * k).sum())(weight) - gradient
    residual = (wf * fit.square().sum() + wg * gradient_fit.square().sum()).sqrt()
    scale = (wf * target.square().sum() + wg * gradient.square().sum()).sqrt().clamp_min(1e-30)
    return x, {**report, "residual": float(residual / scale)}


@attack("rgap")
class RGAP(Attack):
    """R-GAP (Zhu & Blaschko, ICLR 2021, Eq. 7): closed-form, layer-by-layer least squares from the top layer down,
    with the rank condition rank([W_i; K_i]) = dim(x_i) checked and reported per layer. FedSGD, batch 1."""

    family = "analytic"
    title = "R-GAP"
    assumes = "batch 1, FedSGD, a chain of conv/linear layers with invertible activations, noiseless gradients"
    parameters = {"labels": LABELS}

    def applies(self, model, shape, protocol, batch_size):
        try:
            blocks(copy.deepcopy(model).cpu().double(), tuple(shape))
        except NotApplicable as exc:
            return str(exc).removeprefix("rgap: ")
        if protocol != "fedsgd":
            return "it inverts a FedSGD gradient"
        return "it needs batch 1" if batch_size != 1 else None

    def __init__(self, *, labels: str = "inferred"):
        self.labels = labels

    def requirements(self, protocol):
        if protocol != "fedsgd":
            raise ConfigError("attack rgap inverts one gradient: it needs protocol fedsgd")
        return super().requirements(protocol)

    def reconstruct(self, view, simulate, generator, progress=None):
        if view.batch_size != 1:
            raise NotApplicable(f"rgap: inverts one sample's gradient; batch size is {view.batch_size}")
        if not hasattr(view.model, "net"):
            raise NotApplicable("rgap: the broadcast model is not a plain classifier (was it modified?)")
        net = copy.deepcopy(view.model.net).cpu().double()
        chain = blocks(net, view.shape)
        message = {k: v.detach().cpu().double() for k, v in view.message.items()}
        param = {name: {k: v.detach() for k, v in layer.named_parameters()} for name, layer, _, _ in chain}
        top = chain[-1][0]
        k = message[f"net.{top}.bias"]
        if not k.abs().sum() > 0:
            raise NotApplicable("rgap: the classifier's bias gradient is zero")
        x = (k @ message[f"net.{top}.weight"]) / (k @ k)
        upstream = param[top]["weight"].T @ k
        # every row c with k_c != 0 gives x exactly: rank = dim(x) from the gradient equations alone
        reports = [{"layer": top, "unknowns": x.numel(), "forward_eqs": 0, "gradient_eqs": k.numel() * x.numel(),
                    "rank": x.numel(), "condition": 1.0, "residual": 0.0}]
        for name, layer, act, in_shape in reversed(chain[:-1]):
            f = layer_map(layer)
            weight = param[name]["weight"]
            z, slope = activation_inverse(act, x)
            out_shape = f(torch.zeros(in_shape, dtype=weight.dtype), weight).shape
            z, slope, upstream = z.view(out_shape), slope.view(out_shape), upstream.view(out_shape)
            k = upstream * slope
            bias = param[name].get("bias")
            target = z - (bias.view(1, -1, *([1] * (z.dim() - 2))) if bias is not None else 0)
            x, report = solve_layer(layer, weight, k, target, message[f"net.{name}.weight"], in_shape)
            reports.append({"layer": name, **report})
            if report["rank"] < report["unknowns"]:
                raise NotApplicable(f"rgap: layer {name} is rank deficient (rank {report['rank']} < "
                                    f"{report['unknowns']} unknowns from {report['forward_eqs']} forward and "
                                    f"{report['gradient_eqs']} gradient equations)", details={"layers": reports[::-1]})
            upstream = vjp(lambda inp, f=f, weight=weight: f(inp, weight), x)[1](k)[0]
        mean, std = view.model.mean.cpu().double(), view.model.std.cpu().double()
        image = (x.view(1, *view.shape) * std + mean).float().clamp(0, 1)
        y = label_methods.resolve(self.labels, view, simulate)
        if progress:
            progress(1)
        return Reconstruction(image, y, 1, extra={"layers": reports[::-1]})
