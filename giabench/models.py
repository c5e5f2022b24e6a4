"""The model zoo: the victim architectures of the gradient inversion literature, wrapped with normalization.

Every model takes pixels in [0, 1]; ``Classifier`` subtracts the dataset mean and divides by its std, so attacks
optimize and clamp in pixel space. A model's *state* is ``untrained`` (seeded initialization), ``trained:N`` (N
seeded SGD steps on a dataset, cached on disk) or ``checkpoint:PATH`` (a tensor-only state dict). Its *mode* is
``eval`` (batch norm uses running statistics, as in the Inverting Gradients experiments) or ``train`` (batch norm
uses the client batch's statistics).

Its *init* is how the untrained weights are drawn (seeded by the cell's seed). Each model's default is what the cited
paper's code does, named in its docstring; the others are options. The scheme is a model parameter, so it is part of
the cell's identity and recorded with its results:
- ``pytorch``: every layer's own ``reset_parameters`` (Kaiming-uniform with a = sqrt(5) for convolutions and linear
  layers, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) biases, batch norm 1 and 0);
- ``he``: Kaiming-normal convolution weights, std = sqrt(2 / fan_out) (torchvision's ResNets), the rest as built;
- ``uniform``: every weight and bias U(-0.5, 0.5) (DLG's LeNet);
- ``lecun``: Flax's default, every convolution and linear weight from a normal truncated at 2 std with variance
  1 / fan_in, biases 0 (the JAX code of Dimitrov et al.'s FedAvg attack).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from giabench import checks
from giabench.errors import ConfigError, first_line
from giabench.registry import model, models

MODES = ("eval", "train")
INITS = ("pytorch", "he", "uniform", "lecun")


def initialize(net: nn.Module, init: str, built: str = "pytorch") -> None:
    """Draw ``net``'s weights by ``init``; ``built`` is the scheme the constructor already applied, which is kept as
    it is (so its random draws are the constructor's)."""
    checks.one_of(type(net).__name__.lower(), "init", init, INITS)
    if init == built:
        return
    for m in net.modules():
        if init == "pytorch" and isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.reset_parameters()
        elif init == "he" and isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if init == "uniform":
        for p in net.parameters():
            nn.init.uniform_(p, -0.5, 0.5)
    if init == "lecun":
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # a truncation at 2 std shrinks the std by 0.8796, which Flax undoes: the variance is 1 / fan_in
                std = (1 / m.weight[0].numel()) ** 0.5 / 0.87962566
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(m.bias)


class Classifier(nn.Module):
    """``net((x - mean) / std)``: normalization inside the model, so inputs are pixels in [0, 1]."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.get_default_dtype()).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.get_default_dtype()).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    @property
    def classifier_weight(self) -> str:
        """Parameter name of the last linear layer's weight (its gradient carries the labels)."""
        names = [name for name, m in self.named_modules() if isinstance(m, nn.Linear)]
        if not names:
            raise ConfigError("the model has no linear layer (the classifier whose weight gradient carries the labels)")
        return f"{names[-1]}.weight"


class TextClassifier(Classifier):
    """``net(x)``: a text model embeds token ids (or takes word embeddings) itself; nothing to normalize."""

    def __init__(self, net: nn.Module):
        nn.Module.__init__(self)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@model("lenet")
class LeNet(nn.Module):
    """The DLG paper's LeNet (Zhu et al., NeurIPS 2019): three 5x5 convolutions (12 channels), sigmoid, one FC. Init
    ``uniform`` (every weight and bias U(-0.5, 0.5)), as DLG's code (and breaching's LeNetZhu) does."""

    def __init__(self, shape, num_classes, *, channels: int = 12, init: str = "uniform"):
        super().__init__()
        checks.at_least("lenet", 1, channels=channels)
        c, h, w = shape
        act = nn.Sigmoid
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 5, stride=2, padding=2), act(),
            nn.Conv2d(channels, channels, 5, stride=2, padding=2), act(),
            nn.Conv2d(channels, channels, 5, stride=1, padding=2), act(),
        )
        self.fc = nn.Linear(channels * ((h + 3) // 4) * ((w + 3) // 4), num_classes)
        initialize(self, init)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


ACTIVATIONS = {"relu": nn.ReLU, "leaky-relu": nn.LeakyReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _conv_bn(cin: int, cout: int, act: str) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), ACTIVATIONS[act]()]


@model("convnet")
class ConvNet(nn.Module):
    """The ConvNet of Inverting Gradients (Geiping et al., NeurIPS 2020): 8 conv-BN-ReLU blocks of width w, 2w and
    4w with two max-pools, then one linear layer. ``width`` scales every layer (the paper uses 64). Init
    ``pytorch``, the layers' own, which the Inverting Gradients code (``ConvNet`` in inversefed) and breaching keep;
    ``he`` was giabench's choice before 0.2."""

    def __init__(self, shape, num_classes, *, width: int = 64, activation: str = "relu", pool: str = "max",
                 init: str = "pytorch"):
        super().__init__()
        checks.at_least("convnet", 1, width=width)
        checks.one_of("convnet", "activation", activation, tuple(ACTIVATIONS))
        checks.one_of("convnet", "pool", pool, tuple(POOLS))
        c, h, w = shape
        a, b, d = width, 2 * width, 4 * width
        blocks = [(c, a), (a, b), (b, b), (b, d), (d, d), (d, d), "pool", (d, d), (d, d), "pool"]
        layers = [m for blk in blocks for m in ([POOLS[pool](3)] if blk == "pool" else _conv_bn(*blk, activation))]
        self.features = nn.Sequential(*layers)
        with torch.no_grad():  # eval mode: the shape probe must not move the fresh batch-norm buffers
            flat = self.features.eval()(torch.zeros(2, c, h, w)).flatten(1).shape[1]
        self.features.train()
        self.fc = nn.Linear(flat, num_classes)
        initialize(self, init)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@model("resnet18")
def resnet18(shape, num_classes, *, width: int = 64, init: str = "he", activation: str = "relu") -> nn.Module:
    """ResNet-18 (He et al., CVPR 2016) with the CIFAR stem: a 3x3 stride-1 first convolution and no max-pool. Init
    ``he``, torchvision's (Kaiming-normal fan-out convolutions, batch norm 1 and 0), which the Inverting
    Gradients code's ResNet and breaching's keep. ``activation: sigmoid`` puts a sigmoid in place of every ReLU, as
    FedLeak's code does to its victim (Fan et al., USENIX Security 2025)."""
    checks.require("resnet18", "width", width, width == 64, "64 (the only width supported)")
    checks.one_of("resnet18", "activation", activation, ("relu", "sigmoid"))
    net = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes,
                                    width_per_group=64)
    net.conv1 = nn.Conv2d(shape[0], 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    initialize(net, init, built="he")
    if activation == "sigmoid":
        for module in net.modules():
            for name, child in module.named_children():
                if isinstance(child, nn.ReLU):
                    setattr(module, name, nn.Sigmoid())
    return net


@model("cnn6")
class CNN6(nn.Module):
    """A six-convolution LeakyReLU network in the style of R-GAP's CNN6 (Zhu & Blaschko, ICLR 2021): bias-free
    convolutions 3-12-36-36-36-64-128 channels (the first 4x4, the rest 3x3; strides 2, 2, 1, 1, 2, 1), LeakyReLU
    with slope ``slope``, one linear layer with a bias. Every layer has at least as many forward plus gradient
    equations as unknown inputs, the condition R-GAP's layer-wise inversion needs. Init ``pytorch``, as R-GAP's
    code leaves it."""

    def __init__(self, shape, num_classes, *, slope: float = 0.2, init: str = "pytorch"):
        super().__init__()
        checks.require("cnn6", "slope", slope, 0 < slope < 1, "in (0, 1) so the activation is invertible")
        c, h, w = shape
        plan = [(c, 12, 4, 2), (12, 36, 3, 2), (36, 36, 3, 1), (36, 36, 3, 1), (36, 64, 3, 2), (64, 128, 3, 1)]
        layers: list[nn.Module] = []
        for cin, cout, k, stride in plan:
            layers += [nn.Conv2d(cin, cout, k, stride=stride, padding=1, bias=False), nn.LeakyReLU(slope)]
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).numel()
        self.fc = nn.Linear(flat, num_classes)
        initialize(self, init)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@model("cifarcnn")
class CifarCNN(nn.Module):
    """The small CNN of the personalized-FL papers (FedPAC; HyperFL, Guo et al., AAAI 2025): 5x5 convolutions with
    16 and 32 channels, each followed by LeakyReLU and 2x2 max-pooling, a 3x3 convolution with 64 channels and
    LeakyReLU, then ``fc1`` to 128 units (LeakyReLU) and the classifier ``fc2``. On 32x32 inputs fc1 sees 576
    features, as in the paper's CIFAR-10 network. Init ``pytorch``, as the FedPAC/HyperFL code leaves it."""

    def __init__(self, shape, num_classes, *, hidden: int = 128, init: str = "pytorch"):
        super().__init__()
        checks.at_least("cifarcnn", 1, hidden=hidden)
        c, h, w = shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 5), nn.LeakyReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.LeakyReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.LeakyReLU(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).numel()
        self.fc1 = nn.Linear(flat, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        initialize(self, init)

    def forward(self, x):
        return self.fc2(F.leaky_relu(self.fc1(self.features(x).flatten(1))))


@model("fmnist-cnn")
class FmnistCNN(nn.Module):
    """HyperFL's Fashion-MNIST CNN (Guo et al., AAAI 2025; their code's ``CNN_FMNIST``): 5x5 convolutions with 16
    (no padding) and 32 (padding 1) channels, each followed by 2x2 max-pooling and LeakyReLU, ``fc1`` from 800 to
    128 units (LeakyReLU) and the classifier ``fc2``. Init ``pytorch``, as their code leaves it."""

    def __init__(self, shape, num_classes, *, init: str = "pytorch"):
        super().__init__()
        c, h, w = shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 5), nn.MaxPool2d(2), nn.LeakyReLU(),
            nn.Conv2d(16, 32, 5, padding=1), nn.MaxPool2d(2), nn.LeakyReLU(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).numel()
        self.fc1 = nn.Linear(flat, 128)
        self.fc2 = nn.Linear(128, num_classes)
        initialize(self, init)

    def forward(self, x):
        return self.fc2(F.leaky_relu(self.fc1(self.features(x).flatten(1))))


@model("femnist-cnn")
class FemnistCNN(nn.Module):
    """The FEMNIST CNN of Dimitrov et al. (TMLR 2022, "Data Leakage in Federated Averaging"; their code's Flax
    ``CNN``): 3x3 convolutions with 32 and 64 channels ('same' padding), each followed by ReLU and 2x2 average
    pooling, a fully connected layer of 100 ReLU units and the classifier. Init ``lecun``, Flax's default."""

    def __init__(self, shape, num_classes, *, init: str = "lecun"):
        super().__init__()
        c, h, w = shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), 100)
        self.fc2 = nn.Linear(100, num_classes)
        initialize(self, init, "pytorch")

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(self.features(x).flatten(1))))


@model("mlp")
class MLP(nn.Module):
    """A fully connected network: flatten, ``depth`` hidden layers of ``width`` ReLU units, linear output. Init
    ``pytorch`` (no paper fixes this model)."""

    def __init__(self, shape, num_classes, *, width: int = 256, depth: int = 1, init: str = "pytorch"):
        super().__init__()
        checks.at_least("mlp", 1, width=width)
        checks.at_least("mlp", 0, depth=depth)
        dims = [int(torch.tensor(shape).prod())] + [width] * depth
        layers: list[nn.Module] = [nn.Flatten()]
        for cin, cout in zip(dims[:-1], dims[1:], strict=False):
            layers += [nn.Linear(cin, cout), nn.ReLU()]
        self.layers = nn.Sequential(*layers, nn.Linear(dims[-1], num_classes))
        initialize(self, init)

    def forward(self, x):
        return self.layers(x)


@model("factory")
def user_factory(shape, num_classes, *, factory: str, weights: str = "") -> nn.Module:
    """A practitioner's own network (``giabench audit``): ``factory`` names an importable callable, MODULE:FUNCTION
    (a dotted module name on the Python path, or a path to a .py file), called without arguments, that returns an
    ``nn.Module`` taking images normalized by the dataset's mean and std (for text: token ids, B x n, or word
    embeddings, B x n x d) and returning one logit per class; ``weights`` an optional state dict of tensors
    (``weights_only=True``). The text attacks read a transformer through ``giabench.text_models.TextTransformer``'s
    methods (a subclass, or a model built from its blocks, audits with all of them)."""
    where = f"model factory {factory}"
    module_name, sep, function = factory.rpartition(":")
    if not sep or not module_name or not function:
        raise ConfigError(f"{where}: expected MODULE:FUNCTION (e.g. my_models:make_net or path/to/net.py:make_net)")
    try:
        make = getattr(_user_module(module_name, where), function)
    except AttributeError:
        raise ConfigError(f"{where}: module {module_name!r} has no {function!r}") from None
    if not callable(make):
        raise ConfigError(f"{where}: {function!r} in {module_name!r} is a {type(make).__name__}, not a function")
    try:
        net = make()
    except Exception as exc:  # noqa: BLE001 -- the user's factory failing is reported in one line
        raise ConfigError(f"{where}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{where}: the factory returned {type(net).__name__}, not a torch.nn.Module")
    if weights:
        try:
            net.load_state_dict(read_tensors(weights, "weights"))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()
            raise ConfigError(f"weights {weights}: do not fit the model ({first})") from None
    check_model(net, tuple(shape), num_classes, where, "text" if len(shape) == 2 else "image")
    return net


user_factory.modalities = ("image", "text")


def _user_module(name: str, where: str):
    """The module of a factory: a .py file by its path, else a dotted name imported from the Python path."""
    import importlib
    import importlib.util

    path = Path(name)
    looks_like_path = path.suffix == ".py" or "/" in name or "\\" in name
    if looks_like_path and not (path.suffix == ".py" and path.is_file()):
        raise ConfigError(f"{where}: {name!r} looks like a path but is not an existing .py file; give one, or a "
                          "dotted module name on the Python path")
    try:
        if not looks_like_path:
            return importlib.import_module(name)
        spec = importlib.util.spec_from_file_location(f"giabench_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import module {name!r} ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # noqa: BLE001 -- the user's module failing on import is reported in one line
        raise ConfigError(f"{where}: importing {name!r} raised {type(exc).__name__}: {first_line(exc)}") from None


def check_model(net: nn.Module, shape: tuple[int, ...], num_classes: int, where: str,
                modality: str = "image") -> None:
    """A forward pass on two images of ``shape`` (two sequences of ``shape[0]`` token ids, for text) must give finite
    (2, num_classes) logits."""
    probe = torch.zeros(2, *shape) if modality == "image" else torch.zeros(2, shape[0], dtype=torch.long)
    try:
        with torch.no_grad():
            out = net.eval()(probe)
    except Exception as exc:  # noqa: BLE001 -- any failure of the user's forward pass is reported in one line
        raise ConfigError(f"{where}: the forward pass on {tuple(shape)} images fails ({type(exc).__name__}: "
                          f"{first_line(exc)})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{where}: the output for 2 images is {got}, expected (2, {num_classes}): one logit per "
                          f"class of the data")
    if not out.dtype.is_floating_point or not torch.isfinite(out).all():
        what = "NaN or infinite" if out.dtype.is_floating_point else f"{out.dtype} (not floating point)"
        raise ConfigError(f"{where}: the forward pass returns {what} logits for 2 images; the attacks need finite "
                          "float logits")


def cache_dir() -> Path:
    return Path(os.environ.get("GIABENCH_CACHE", Path.home() / ".cache" / "giabench"))


def check_state(state, where: str) -> None:
    """``untrained``, ``trained:N`` (N whole) or ``checkpoint:PATH``; the checkpoint itself is read by ``build``."""
    ok = isinstance(state, str) and (state == "untrained" or state.startswith("checkpoint:") and len(state) > 11
                                     or state.startswith("trained:") and state[8:].isdigit())
    checks.require(where, "state", state, ok, "untrained, trained:N (N whole SGD steps) or checkpoint:PATH")


def build(name: str, params: dict, data, state: str, seed: int) -> Classifier:
    """Build architecture ``name`` for ``data`` (an ImageSet or a TextSet) in the given state; the same arguments
    give the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = models.get(name)(data.shape, data.num_classes, **params)
    clf = Classifier(net, data.mean, data.std) if data.modality == "image" else TextClassifier(net)
    clf.input_shape = tuple(data.shape)
    check_state(state, f"model {name}")
    if state.startswith("trained:"):
        return _trained(clf, name, params, data, int(state.split(":", 1)[1]), seed)
    if state.startswith("checkpoint:"):
        load_checkpoint(clf, state.split(":", 1)[1])
    return clf


def read_tensors(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors read with ``weights_only=True``; anything else is a ConfigError naming ``what`` and
    ``path``."""
    if not Path(path).is_file():
        raise ConfigError(f"{what} {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a tensor archive
        raise ConfigError(f"{what} {path}: not a torch tensor file ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{what} {path}: expected a state dict of tensors")
    return state


def load_checkpoint(clf: Classifier, path: str) -> None:
    """Load a state dict saved with ``torch.save``; only tensors are accepted (``weights_only=True``)."""
    state = read_tensors(path, "checkpoint")
    try:
        clf.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"checkpoint {path}: does not fit the model ({first})") from exc


def _trained(clf: Classifier, name: str, params: dict, data, steps: int, seed: int) -> Classifier:
    """``steps`` of SGD (lr 0.01, momentum 0.9, batch 32, seeded) on ``data`` (a text set: on its corpus's training
    split, ``TextSet.training``); cached by a hash of the recipe, which includes the thread count and kernel path the
    weights were computed with (``giabench.numerics``)."""
    from giabench import __version__, numerics

    data = data.training() if hasattr(data, "training") else data
    recipe = {"arch": name, "params": params, "data": data.name, "n": len(data), "steps": steps, "seed": seed,
              "version": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "hardware": numerics.hardware("cpu")}
    if torch.get_default_dtype() != torch.float32:  # float32 recipes keep the keys of the weights cached before
        recipe["dtype"] = str(torch.get_default_dtype())
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "models" / f"{name}-{key}.pt"
    if path.is_file():
        clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return clf
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(clf.parameters(), lr=0.01, momentum=0.9)
    clf.train()
    for _ in range(steps):
        index = torch.randint(len(data), (min(32, len(data)),), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(clf(data.images[index]), data.labels[index]).backward()
        optimizer.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # pytest-xdist workers may train the same model at once
    torch.save(clf.state_dict(), tmp)
    tmp.replace(path)
    return clf
