import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from giabench import data, models, protocols

D = data.load("cifar10-sample")


def _setup(name="lenet"):
    model = models.build(name, {}, D, "untrained", seed=0).eval()
    x, y = data.sample(D, 4, seed=0)
    return model, x, y


def test_fedsgd_is_the_mean_gradient():
    model, x, y = _setup()
    update = protocols.build("fedsgd", {}, model).update(x, y)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(update[name], p.grad, atol=1e-6)


def test_fedavg_one_full_batch_step_is_lr_times_gradient():
    model, x, y = _setup()
    sgd = protocols.build("fedsgd", {}, model).update(x, y)
    avg = protocols.build("fedavg", {"epochs": 1, "batch_size": 0, "lr": 0.5}, model).update(x, y)
    assert all(torch.allclose(avg[k], 0.5 * sgd[k], atol=1e-6) for k in sgd)


def test_fedavg_local_steps_follow_sgd():
    model, x, y = _setup()
    proto = protocols.build("fedavg", {"epochs": 2, "batch_size": 2, "lr": 0.1}, model)
    assert proto.local_steps(x) == 4
    reference = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    clone = models.build("lenet", {}, D, "untrained", seed=0).eval()
    for _ in range(2):
        for part in (slice(0, 2), slice(2, 4)):
            for p, r in zip(clone.parameters(), reference, strict=False):
                p.data.copy_(r.data)
            clone.zero_grad()
            F.cross_entropy(clone(x[part]), y[part]).backward()
            for p, r in zip(clone.parameters(), reference, strict=False):
                r.data -= 0.1 * p.grad
    update = proto.update(x, y)
    for (name, p0), r in zip(model.named_parameters(), reference, strict=False):
        assert torch.allclose(update[name], p0.detach() - r.detach(), atol=1e-5)


def test_updates_are_differentiable_in_the_inputs_and_leave_the_model_alone():
    model, x, y = _setup("convnet")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = x.clone().requires_grad_(True)
    update = protocols.build("fedavg", {"epochs": 1, "batch_size": 2, "lr": 0.1}, model).update(x, y)
    (grad_x,) = torch.autograd.grad(sum(v.pow(2).sum() for v in update.values()), x)
    assert grad_x.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched


@pytest.mark.parametrize("name,mode", [("lenet", "eval"), ("convnet", "eval"), ("convnet", "train")])
def test_per_sample_gradients_equal_one_gradient_per_sample(name, mode):
    """The vectorised per-sample gradients (vmap of grad) are the per-sample loop's, as are their derivatives in
    the inputs (what an adaptive attacker of DP-SGD differentiates); in train mode each sample is a batch of one.
    In float64, where both agree to rounding (float32 rounding is amplified by batch norm over one sample). Train
    mode with batch norm takes the loop (see the next test)."""
    model, x, y = _setup(name)
    getattr(model.double(), mode)()
    protocol = protocols.build("fedsgd", {}, model)
    x = x.double().requires_grad_(True)
    stacked = protocol.per_sample_gradients(protocol.params, x, y)
    looped = [protocol.gradient(protocol.params, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
    for k, v in stacked.items():
        assert v.shape == (len(x), *protocol.params[k].shape)
        reference = torch.stack([g[k] for g in looped])
        assert torch.allclose(v, reference, rtol=1e-9, atol=1e-12), k
    (dx,) = torch.autograd.grad(sum(v.pow(2).sum() for v in stacked.values()), x)
    (dx_loop,) = torch.autograd.grad(sum(g[k].pow(2).sum() for g in looped for k in g), x)
    assert (dx - dx_loop).norm() <= 1e-9 * dx_loop.norm()
    assert protocol.vmap_exact == (mode == "eval")
    assert all(torch.equal(b, model.state_dict()[k]) for k, b in protocol.buffers.items())  # BN statistics untouched


def test_second_derivatives_through_train_mode_batch_norm_need_the_plain_pass():
    """Why ``vmap_exact`` is False in train mode: against central finite differences of the cosine objective of a
    smooth (tanh, average-pool) ConvNet in float64, the plain pass's input derivative agrees to 1e-7 relative, torch's
    vmapped one is off by more than 1e-5 (3e-4 measured). When torch fixes its batching rule this test fails, and the
    vmapped path can serve train mode too."""
    from giabench.attacks.optimization import cosine_distance

    model = models.build("convnet", {"width": 8, "activation": "tanh", "pool": "avg"}, D, "untrained", 0)
    model = model.double().train()
    protocol = protocols.build("fedsgd", {}, model)
    x, y = data.sample(D, 2, seed=1)
    observed = {k: v.detach() for k, v in protocol.gradient(protocol.params, x.double(), y).items()}

    def objective(z):
        return cosine_distance(protocol.gradient(protocol.params, z, y), observed)

    generator = torch.Generator().manual_seed(0)
    z = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        numeric = float(objective(z + 1e-6 * direction) - objective(z - 1e-6 * direction)) / 2e-6
    plain = z.clone().requires_grad_(True)
    plain = float((torch.autograd.grad(objective(plain), plain)[0] * direction).sum())
    batched = z[None].repeat(2, 1, 1, 1, 1).requires_grad_(True)
    batched = float((torch.autograd.grad(vmap(objective)(batched).sum(), batched)[0][0] * direction).sum())
    assert abs(plain - numeric) < 1e-7 * abs(numeric)
    assert abs(batched - numeric) > 1e-5 * abs(numeric)


def test_per_sample_gradients_vmap_on_cpu_only_where_that_is_faster():
    """lenet at B=32 (0.5M floats of per-sample gradients) vmaps; ResNet-18 at B=8 (89M) loops, where the vmapped
    pass was measured slower (benchmarks/per_sample_clipping.py); train-mode batch norm loops whatever the size."""
    chosen = {}
    for name, mode, batch in (("lenet", "eval", 32), ("resnet18", "eval", 8), ("convnet", "train", 2)):
        model = getattr(models.build(name, {"width": 8} if name == "convnet" else {}, D, "untrained", 0), mode)()
        protocol = protocols.build("fedsgd", {}, model)
        chosen[name] = protocol.vmap_pays(batch, protocols.CPU_VMAP_SAMPLE_FLOATS)
    assert chosen == {"lenet": True, "resnet18": False, "convnet": False}


@pytest.mark.parametrize("epochs,local_batch", [(1, 0), (2, 3), (3, 4)])
def test_fedavg_declares_the_steps_it_takes(epochs, local_batch):
    """The accountant's step count (``local_steps``, and ``fedavg_steps`` that the audit reads from result rows) is
    the number of gradient evaluations one update makes: epochs x ceil(B / b)."""
    model, x, y = _setup()
    protocol = protocols.build("fedavg", {"epochs": epochs, "batch_size": local_batch, "lr": 0.1}, model)
    calls = []

    def counting(protocol, params, xb, yb):
        calls.append(len(xb))
        return protocol.gradient(params, xb, yb)

    protocol.update(x, y, counting)
    assert len(calls) == protocol.local_steps(x) == protocols.fedavg_steps(len(x), epochs, local_batch)
