import math

import pytest
import torch

from giabench import data, models, protocols
from giabench.errors import ConfigError
from giabench.registry import defenses

D = data.load("cifar10-sample")


def _client(name, protocol="fedsgd", **params):
    model = models.build("lenet", {}, D, "untrained", seed=0).eval()
    proto_params = {"epochs": 1, "batch_size": 2, "lr": 0.1} if protocol == "fedavg" else {}
    return defenses.get(name)(protocols.build(protocol, proto_params, model), **params)


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
@pytest.mark.parametrize("name,params", [("none", {}), ("gauss", {"sigma": 0.0}), ("prune", {"fraction": 0.9}),
                                         ("dp-sgd", {"noise_multiplier": 0.0, "clip": 0.5})])
def test_share_and_simulate_agree_without_fresh_randomness(name, params, protocol):
    client = _client(name, protocol, **params)
    x, y = data.sample(D, 4, seed=0)
    shared = client.share(x, y, torch.Generator().manual_seed(0))
    simulated = client.simulate(x, y)
    assert all(torch.allclose(shared[k], simulated[k], atol=1e-6) for k in shared)


def test_prune_keeps_the_requested_fraction_of_each_layer():
    client = _client("prune", fraction=0.9)
    x, y = data.sample(D, 1, seed=0)
    shared = client.share(x, y, torch.Generator())
    for _name, tensor in shared.items():
        kept = int((tensor != 0).sum())
        assert kept <= math.ceil(0.1 * tensor.numel())
        assert kept >= math.ceil(0.1 * tensor.numel()) - 1  # an entry may be exactly 0
    dense = client.protocol.update(x, y)
    w = client.protocol.model.classifier_weight
    assert float(shared[w].abs().max()) == float(dense[w].abs().max())  # the largest entries survive
    kept = sum(math.ceil(0.1 * t.numel()) for t in shared.values())
    assert client.cost()["bytes"] == 8 * kept  # a float32 value and an int32 index per kept entry


def test_dp_sgd_clips_every_sample_and_adds_calibrated_noise():
    x, y = data.sample(D, 4, seed=0)
    clip = 1e-3
    quiet = _client("dp-sgd", clip=clip, noise_multiplier=0.0)
    message = quiet.share(x, y, torch.Generator())
    norm = math.sqrt(sum(float(v.pow(2).sum()) for v in message.values()))
    assert norm <= clip + 1e-9  # the mean of vectors of norm <= C
    noisy = _client("dp-sgd", clip=clip, noise_multiplier=2.0).share(x, y, torch.Generator().manual_seed(0))
    residual = torch.cat([(noisy[k] - message[k]).flatten() for k in message])
    assert residual.std().item() == pytest.approx(2.0 * clip / 4, rel=0.05)  # z C / B


def test_dp_sgd_epsilon_matches_the_rdp_of_the_gaussian_mechanism(gaussian_epsilon):
    client = _client("dp-sgd", noise_multiplier=1.3, delta=1e-5, rounds=10)
    x, y = data.sample(D, 1, seed=0)
    client.share(x, y, torch.Generator())
    assert client.cost()["epsilon"] == pytest.approx(gaussian_epsilon(1.3, 10, 1e-5), rel=1e-6)


def test_dp_sgd_epsilon_composes_every_local_step_and_round(gaussian_epsilon):
    client = _client("dp-sgd", "fedavg", noise_multiplier=1.0, rounds=3)  # 2 local steps on 4 images
    assert client.cost()["epsilon"] == 0.0  # nothing released yet
    x, y = data.sample(D, 4, seed=0)
    client.share(x, y, torch.Generator())
    assert client.cost()["epsilon"] == pytest.approx(gaussian_epsilon(1.0, 2 * 3, 1e-5), rel=1e-6)
    client.share(x, y, torch.Generator())  # a second message: twice the releases
    assert client.cost()["epsilon"] == pytest.approx(gaussian_epsilon(1.0, 4 * 3, 1e-5), rel=1e-6)


def test_replace_one_adjacency_doubles_the_sensitivity(gaussian_epsilon, resolve_defense):
    x, y = data.sample(D, 1, seed=0)
    costs = {}
    for adjacency in ("add-remove", "replace-one"):
        client = _client("dp-sgd", noise_multiplier=1.0, adjacency=adjacency)
        client.share(x, y, torch.Generator())
        costs[adjacency] = client.cost()
        assert costs[adjacency]["adjacency"] == adjacency
    assert costs["add-remove"]["epsilon"] == pytest.approx(4.73, abs=0.01)
    assert costs["replace-one"]["epsilon"] == pytest.approx(gaussian_epsilon(0.5, 1, 1e-5), rel=1e-6)
    assert costs["replace-one"]["epsilon"] == pytest.approx(10.73, abs=0.01)
    with pytest.raises(ConfigError, match="replace-one"):
        resolve_defense("dp-sgd", adjacency="replace-one", sample_rate=0.5)
    with pytest.raises(ConfigError, match="adjacency must be one of"):
        resolve_defense("dp-sgd", adjacency="swap")


def test_dp_sgd_poisson_sampling_is_unbiased_and_amplifies():
    """At q = 0.5 each message clips and sums a fresh Poisson sample and divides by q B: its mean over draws is the
    clipped batch mean the attacker matches, and epsilon is the subsampled Gaussian's, below q = 1's."""
    x, y = data.sample(D, 4, seed=0)
    sampled = _client("dp-sgd", noise_multiplier=0.0, clip=1e-3, sample_rate=0.5)
    w = sampled.protocol.model.classifier_weight
    draws = torch.stack([sampled.share(x, y, torch.Generator().manual_seed(s))[w] for s in range(400)])
    expected = sampled.simulate(x, y)[w]
    assert not torch.allclose(draws[0], expected)  # one draw is not the full batch
    assert (draws.mean(0) - expected).norm() < 0.1 * expected.norm()
    from opacus.accountants import RDPAccountant

    noisy = _client("dp-sgd", noise_multiplier=1.0, sample_rate=0.5)
    noisy.share(x, y, torch.Generator())
    accountant = RDPAccountant()
    accountant.step(noise_multiplier=1.0, sample_rate=0.5)
    assert noisy.cost()["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert noisy.cost()["epsilon"] < 4.7


def test_gauss_noise_has_the_stated_scale():
    client = _client("gauss", sigma=0.05)
    x, y = data.sample(D, 1, seed=0)
    noisy = client.share(x, y, torch.Generator().manual_seed(1))
    clean = client.simulate(x, y)
    residual = torch.cat([(noisy[k] - clean[k]).flatten() for k in clean])
    assert residual.std().item() == pytest.approx(0.05, rel=0.05)
    assert math.isinf(client.cost()["epsilon"])


def test_bad_defense_values_are_refused(resolve_defense):
    with pytest.raises(ConfigError, match="fraction"):
        resolve_defense("prune", fraction=1.0)
    with pytest.raises(ConfigError, match=r"defense dp-sgd: clip must be > 0, got 0.0$"):
        resolve_defense("dp-sgd", clip=0.0)
    with pytest.raises(ConfigError, match=r"defense dp-sgd: sample_rate must be in \(0, 1\], got 1.5$") as caught:
        resolve_defense("dp-sgd", sample_rate=1.5)
    assert caught.value.field == "sample_rate"  # one rule named, and the parameter a suite file can point at
