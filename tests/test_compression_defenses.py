"""Quantization and Soteria: the mechanisms as their papers define them, the attacker's model of them, their bytes."""

import math

import pytest
import torch

from giabench import data, models, protocols
from giabench.attacks.optimization import InvertingGradients
from giabench.contracts import ServerView
from giabench.defenses.soteria import representation_scores
from giabench.errors import ConfigError
from giabench.registry import defenses

D = data.load("cifar10-sample")


def _client(name, arch="lenet", **params):
    model = models.build(arch, {}, D, "untrained", seed=0).eval()
    return defenses.get(name)(protocols.build("fedsgd", {}, model), **params)


def _flat(update: dict) -> torch.Tensor:
    return torch.cat([v.flatten() for v in update.values()])


def test_qsgd_is_unbiased_and_sends_levels_of_each_bucket_norm():
    client = _client("quantize", scheme="qsgd", levels=2, bucket=64)
    x, y = data.sample(D, 2, seed=0)
    dense = client.protocol.update(x, y)
    w = client.protocol.model.classifier_weight
    draws = [client.share(x, y, torch.Generator().manual_seed(s)) for s in range(300)]
    mean = torch.stack([_flat(d) for d in draws]).mean(0)
    assert (mean - _flat(dense)).norm() < 0.1 * _flat(dense).norm()  # E[Q(u)] = u
    assert not torch.equal(draws[0][w], draws[1][w])  # fresh randomness per message
    bucket = dense[w].flatten()[:64]
    levels = draws[0][w].flatten()[:64].abs() / bucket.norm() * 2  # |Q(v_i)| = ||v|| l / s, l in {0, 1, 2}
    assert torch.allclose(levels, levels.round(), atol=1e-5) and levels.max() <= 2
    assert torch.equal(_flat(client.simulate(x, y)), _flat(dense))  # the attacker matches the expectation
    buckets = sum(-(-p.numel() // 64) for p in client.protocol.params.values())
    assert client.cost()["bytes"] == math.ceil((client.numel() * (1 + 2) + 32 * buckets) / 8)


@pytest.mark.parametrize("scheme,bits_per_entry", [("sign", 1), ("fp16", 16), ("uniform", 4)])
def test_deterministic_schemes_are_simulated_exactly_and_differentiated_straight_through(scheme, bits_per_entry):
    client = _client("quantize", scheme=scheme, bits=4)
    x, y = data.sample(D, 1, seed=0)
    shared = client.share(x, y, torch.Generator())
    z = x.clone().requires_grad_(True)
    simulated = client.simulate(z, y)
    assert all(torch.equal(shared[k], simulated[k].detach()) for k in shared)
    dense = client.protocol.update(x, y)
    for k, v in shared.items():
        if scheme == "sign":
            assert torch.equal(v, dense[k].abs().mean() * torch.sign(dense[k]))
        elif scheme == "fp16":
            assert torch.equal(v, dense[k].half().float())
        else:  # at most 2^(b-1) - 1 levels a side, rounding to the nearest
            step = dense[k].abs().max() / 7
            assert len(torch.unique(v)) <= 15 and float((v - dense[k]).abs().max()) <= float(step) / 2 + 1e-7
    direction = {k: torch.randn_like(v) for k, v in dense.items()}
    through = torch.autograd.grad(sum((simulated[k] * direction[k]).sum() for k in direction), z)[0]
    plain = client.protocol.update(z, y)
    expected = torch.autograd.grad(sum((plain[k] * direction[k]).sum() for k in direction), z)[0]
    assert torch.allclose(through, expected, rtol=1e-5, atol=1e-7)  # dQ/du = I (BPDA)
    scales = 0 if scheme == "fp16" else 32 * len(dense)
    assert client.cost()["bytes"] == math.ceil((client.numel() * bits_per_entry + scales) / 8)


def test_quantized_simulate_runs_under_vmapped_restarts():
    client = _client("quantize", scheme="uniform", bits=4)
    x, y = data.sample(D, 1, seed=0)
    view = ServerView(client.protocol.model, client.protocol, client.share(x, y, torch.Generator()), {}, D.shape,
                      D.num_classes, 1, y)
    result = InvertingGradients(iterations=3, restarts=2).reconstruct(view, client.simulate, torch.Generator())
    assert result.images.shape == x.shape and torch.isfinite(result.images).all()


@pytest.mark.parametrize("arch", ["lenet", "mlp"])
def test_soteria_scores_are_the_reference_loops_and_prune_the_lowest_units(arch):
    client = _client("soteria", arch, fraction=0.8)
    x, y = data.sample(D, 3, seed=0)
    model = client.protocol.model
    captured = []
    handle = model.get_submodule(client.layer).register_forward_hook(lambda _m, i, _o: captured.append(i[0]))
    z = x.clone().requires_grad_(True)
    model(z)
    handle.remove()
    r = captured[0].flatten(1)
    loop = torch.stack([  # the reference code: one backward per unit, the batch's per-sample input gradients
        (torch.autograd.grad(r[:, f].sum(), z, retain_graph=True)[0].flatten(1).norm(dim=1) / (r[:, f] + 0.1)).sum()
        for f in range(r.shape[1])]).detach()
    scores = representation_scores(client.protocol, x, client.layer)
    assert torch.allclose(scores, loop, rtol=1e-5, atol=1e-6)

    shared, dense = client.share(x, y, torch.Generator()), client.protocol.update(x, y)
    weight = f"{client.layer}.weight"
    mask = client.public["mask"]
    assert torch.equal(mask, (scores.abs() >= torch.quantile(scores, 0.8)).float())
    assert int(mask.sum()) == pytest.approx(0.2 * len(mask), abs=1)
    assert float(scores[mask == 1].min()) >= float(scores[mask == 0].max())  # the lowest scores are pruned
    assert torch.equal(shared[weight], dense[weight] * mask)
    assert all(torch.equal(shared[k], dense[k]) for k in dense if k != weight)  # every other tensor intact
    assert all(torch.equal(shared[k], client.simulate(x, y)[k]) for k in shared)  # the attacker knows the mask


def test_soteria_needs_a_shared_message_and_bad_values_are_refused(resolve_defense):
    client = _client("soteria")
    x, y = data.sample(D, 1, seed=0)
    with pytest.raises(RuntimeError, match="call share"):
        client.simulate(x, y)
    with pytest.raises(ConfigError, match="fraction"):
        resolve_defense("soteria", fraction=1.0)
    headless = models.Classifier(torch.nn.Flatten(), D.mean, D.std)  # no linear layer to defend
    with pytest.raises(ConfigError, match="no linear layer"):
        defenses.get("soteria")(protocols.build("fedsgd", {}, headless)).share(x, y, torch.Generator())
    with pytest.raises(ConfigError, match="scheme"):
        resolve_defense("quantize", scheme="int3")
    with pytest.raises(ConfigError, match="bits"):
        resolve_defense("quantize", scheme="uniform", bits=1)
    with pytest.raises(ConfigError, match="levels"):
        resolve_defense("quantize", levels=0)
