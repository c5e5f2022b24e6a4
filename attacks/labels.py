"""Label inference from the last layer's gradient.

For cross-entropy and penultimate features h >= 0 (after ReLU or sigmoid), sample k contributes
    dL/dW_c = (1/B) (p_{k,c} - 1[c = y_k]) h_k,    dL/db_c = (1/B) (p_{k,c} - 1[c = y_k]),
so a class present in the batch pulls its row of the weight gradient negative. All methods read the row sums
g_c = sum_j dL/dW_{c,j} of the observed message.

- ``idlg``: iDLG (Zhao, Mopuri, Bilen, arXiv 2001.02610, Sec. 3): the single label argmin_c g_c; for B > 1 the B most
  negative row sums (each class at most once).
- ``yin``: Yin et al. (CVPR 2021, Sec. 3.1): the B classes with the smallest min_j dL/dW_{c,j}; assumes distinct labels.
- ``llg``: LLG (Wainakh et al., PETS 2022): every class with g_c < 0 is present; the impact of one sample is
  m = (1 + 1/C) sum_{g_c < 0} g_c / B; after each pick g_c -= m, then repeatedly pick argmin_c g_c until B labels.
  (The popular re-implementation that subtracts from a stale index, so that stage two keeps picking one class, is not
  reproduced.)
- ``llg+``: LLG with the impact m and per-class offsets s_c estimated on the current model from surrogate data
  (threat model D): for every class c, batches of B surrogate images all labelled c give g^(c);
  m = (1 + 1/C) mean_c g^(c)_c / B and s_j = mean_{c != j} g^(c)_j; then LLG on g - s. Once the offsets are
  removed an absent class scatters around 0 rather than sitting above it, so stage one takes the classes with
  g_c - s_c < m / 2 (half a sample's impact) instead of g_c < 0.
- ``ilrg``: iLRG (Ma et al., ICLR 2023, Sec. 4): class-wise mean embeddings e_j = (dL/dW_j) / (dL/db_j), their
  post-softmax predictions P_j = softmax(W e_j + b), and the per-class counts n solving
      sum_j n_j = B,    sum_j n_j P_{j,i} - n_i = B dL/db_i   (i = 1..C)
  by the Moore-Penrose pseudo-inverse, then clipped at 0, rounded and corrected to sum to B. Needs a last-layer bias
  and the mean-gradient (FedSGD) message.
- ``fedavg``: Dimitrov et al. (TMLR 2022, "Data Leakage in Federated Averaging", Sec. 4.3) for an update of S local
  steps: the message holds the sum of the step gradients, sum_s dL_s/dW = u / eta (u itself for FedSGD, S = 1), whose
  row sums are about sum_s O_s (p_{s,c} - n_{s,c} / b) with O the mean summed penultimate feature and p the mean
  softmax. Each step's O_s and p_s are estimated on random inputs (N(0, I) in the normalized space), interpolated
  linearly between the broadcast weights w_0 and the client's end weights w_0 - u, and give one count estimate
      n_c = B p_{s,c} - B g_c / (O_s S);
  the S estimates are averaged, then rounded to whole counts summing to B (the paper's "avg" variant).
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from giabench.errors import ConfigError, NotApplicable
from giabench.protocols import FedAvg, fedavg_steps

LLG_PLUS_REPEATS = 10
FEDAVG_LABEL_SAMPLES = 1000  # random inputs per weight point (the paper's FEMNIST runs: 1000, CIFAR-10: 3000)


def row_sums(view) -> torch.Tensor:
    return view.message[view.model.classifier_weight].detach().sum(dim=1).cpu()


def _fill(labels: list[int], scores: torch.Tensor, batch: int) -> torch.Tensor:
    """Pad ``labels`` to the batch size with the best-scoring classes (lowest score first), cycling if needed."""
    order = torch.argsort(scores).tolist()
    i = 0
    while len(labels) < batch:
        labels.append(order[i % len(order)])
        i += 1
    return torch.tensor(labels[:batch])


def idlg(view, simulate=None) -> torch.Tensor:
    sums = row_sums(view)
    return _fill(torch.argsort(sums)[: view.batch_size].tolist(), sums, view.batch_size)


def yin(view, simulate=None) -> torch.Tensor:
    minima = view.message[view.model.classifier_weight].detach().min(dim=1).values.cpu()
    return _fill(torch.argsort(minima)[: view.batch_size].tolist(), minima, view.batch_size)


def _llg(g: torch.Tensor, batch: int, impact: torch.Tensor | float, threshold: float = 0.0) -> torch.Tensor:
    g = g.clone()
    negative = torch.nonzero(g < threshold).flatten()
    negative = negative[torch.argsort(g[negative])][:batch].tolist()
    labels = []
    for c in negative:  # stage 1: every negative row is a present class
        labels.append(c)
        g[c] -= impact
    while len(labels) < batch:  # stage 2: the most negative remaining row, its impact removed after each pick
        c = int(torch.argmin(g))
        labels.append(c)
        g[c] -= impact
    return torch.tensor(labels)


def llg(view, simulate=None) -> torch.Tensor:
    g = row_sums(view)
    negative = g[g < 0]
    if negative.numel() == 0:
        return idlg(view)
    impact = (1 + 1 / g.numel()) * negative.sum() / view.batch_size
    return _llg(g, view.batch_size, impact)


def llg_plus(view, simulate) -> torch.Tensor:
    if view.surrogate is None or len(view.surrogate) == 0:
        raise ConfigError("label method llg+ needs surrogate data (threat model D or higher)")
    classes, batch = view.num_classes, view.batch_size
    generator = torch.Generator().manual_seed(0)
    device = view.model.mean.device
    per_class = torch.zeros(classes, classes)  # row c: mean g over batches all labelled c
    for c in range(classes):
        for _ in range(LLG_PLUS_REPEATS):
            index = torch.randint(len(view.surrogate), (batch,), generator=generator)
            x = view.surrogate[index].to(device)
            y = torch.full((batch,), c, device=device)
            weight = simulate(x, y)[view.model.classifier_weight].detach()
            per_class[c] += weight.sum(dim=1).cpu() / LLG_PLUS_REPEATS
    impact = (1 + 1 / classes) * per_class.diagonal().mean() / batch
    off_diagonal = ~torch.eye(classes, dtype=torch.bool)
    offsets = (per_class * off_diagonal).sum(dim=0) / (classes - 1)
    return _llg(row_sums(view) - offsets, batch, impact, threshold=float(impact) / 2)


def counts_to_labels(counts: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(counts.numel()), counts)


def round_counts(raw: torch.Tensor, batch: int) -> torch.Tensor:
    """Non-negative whole counts summing to ``batch``: round, then move the largest rounding errors."""
    counts = raw.clamp_min(0).round().long()
    counts[counts > batch] = 0
    error = counts.double() - raw
    surplus = int(counts.sum()) - batch
    if surplus > 0:  # take from the classes rounded up the most (that still have a count)
        for c in torch.argsort(error, descending=True).tolist():
            if surplus == 0:
                break
            if counts[c] > 0:
                counts[c] -= 1
                surplus -= 1
    elif surplus < 0:  # give to the classes rounded down the most
        for c in torch.argsort(error).tolist()[: -surplus]:
            counts[c] += 1
    return counts


def ilrg(view, simulate=None) -> torch.Tensor:
    weight_name = view.model.classifier_weight
    bias_name = weight_name[: -len("weight")] + "bias"
    if bias_name not in view.message:
        raise ConfigError("label method ilrg needs a last layer with a bias")
    weight, bias = view.protocol.params[weight_name].double().cpu(), view.protocol.params[bias_name].double().cpu()
    grad_w, grad_b = view.message[weight_name].double().cpu(), view.message[bias_name].double().cpu()
    safe = torch.where(grad_b.abs() > 0, grad_b, torch.ones_like(grad_b))
    embeddings = torch.where(grad_b[:, None].abs() > 0, grad_w / safe[:, None], torch.zeros_like(grad_w))
    probs = torch.softmax(embeddings @ weight.T + bias, dim=1)  # row j: prediction at class j's mean embedding
    classes = grad_b.numel()
    system = torch.cat([torch.ones(1, classes), probs.T - torch.eye(classes)])
    values = torch.cat([torch.tensor([float(view.batch_size)]), view.batch_size * grad_b])
    raw = torch.linalg.pinv(system) @ values
    return counts_to_labels(round_counts(raw, view.batch_size))


def _feature_and_softmax(view, params, x) -> tuple[float, torch.Tensor]:
    """On inputs ``x`` at weights ``params``: the mean over samples of the summed input of the classifier layer
    (O) and the mean softmax (p)."""
    layer = view.model.get_submodule(view.model.classifier_weight.removesuffix(".weight"))
    captured = []
    handle = layer.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            logits = functional_call(view.model, (params, view.protocol.call_buffers()), (x,))
    finally:
        handle.remove()
    return float(captured[0].flatten(1).sum(dim=1).mean()), torch.softmax(logits, dim=-1).mean(dim=0).cpu()


def fedavg_counts(view, simulate=None) -> torch.Tensor:
    proto, batch = view.protocol, view.batch_size
    x = view.model.mean + view.model.std * torch.randn(
        (FEDAVG_LABEL_SAMPLES, *view.shape), generator=torch.Generator().manual_seed(0)).to(view.model.mean.device)
    o_start, p_start = _feature_and_softmax(view, proto.params, x)
    if isinstance(proto, FedAvg):
        steps, lr = fedavg_steps(batch, proto.epochs, proto.batch_size), proto.lr
        end = {k: v - view.message[k].to(v) if k in view.message else v for k, v in proto.params.items()}
        o_end, p_end = _feature_and_softmax(view, end, x)
    else:  # FedSGD: one step at the broadcast weights
        steps, lr, o_end, p_end = 1, 1.0, o_start, p_start
    summed = row_sums(view).double() / lr
    raw = torch.zeros_like(summed)
    for s in range(steps):
        c = s / steps
        o, p = (1 - c) * o_start + c * o_end, (1 - c) * p_start.double() + c * p_end.double()
        raw += batch * p - batch * summed / (o * steps)
    return counts_to_labels(round_counts(raw / steps, batch))


METHODS = {"idlg": idlg, "yin": yin, "llg": llg, "llg+": llg_plus, "ilrg": ilrg, "fedavg": fedavg_counts}
TITLES = {"idlg": "iDLG", "yin": "Yin", "llg": "LLG", "llg+": "LLG+", "ilrg": "iLRG", "fedavg": "Dimitrov"}
NEEDS = {"llg+": {"surrogate-data"}}


def parse(mode: str) -> str:
    """The method name of ``inferred`` / ``inferred:NAME``."""
    method = mode.split(":", 1)[1] if ":" in mode else "idlg"
    if method not in METHODS:
        raise ConfigError(f"unknown label method {method!r}; known: {', '.join(METHODS)}")
    return method


def requirements(mode: str) -> set[str]:
    return set(NEEDS.get(parse(mode), set()))


def infer(mode: str, view, simulate) -> torch.Tensor:
    if view.model.classifier_weight not in view.message:
        raise NotApplicable(f"label inference ({parse(mode)}) reads the classifier's gradient, which this message does "
                            "not carry in the clear (e.g. a sketch); use labels: known")
    return METHODS[parse(mode)](view, simulate).cpu()


def check(mode: str, allowed: tuple[str, ...] = ()) -> None:
    """Validate an attack's ``labels`` parameter: ``known``, ``inferred[:METHOD]`` or one of ``allowed``."""
    if mode == "known" or mode in allowed:
        return
    if mode.startswith("inferred"):
        parse(mode)
        return
    raise ConfigError(f"labels must be one of known, inferred[:METHOD]{''.join(', ' + a for a in allowed)}; "
                      f"got {mode!r}", field="labels")


def resolve(mode: str, view, simulate) -> torch.Tensor | None:
    """Labels for the dummy batch: ``known`` (granted by the threat model), ``inferred[:METHOD]`` (from the message),
    or ``None`` when the attack optimizes them itself (``optimized``)."""
    if mode == "known":
        if view.labels is None:
            raise ConfigError("attack needs labels: known, but the threat model does not grant them")
        return view.labels
    if mode.startswith("inferred"):
        return infer(mode, view, simulate)
    return None
