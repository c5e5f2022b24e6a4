import math

import numpy as np
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


def test_dp_sgd_epsilon_matches_the_rdp_of_the_gaussian_mechanism():
    """Independent check: without subsampling the Gaussian mechanism has RDP alpha T / (2 z^2); Opacus converts it
    with eps = rdp + log((a-1)/a) - (log delta + log a)/(a-1) (Balle et al. 2020), minimized over its orders."""
    from opacus.accountants.rdp import RDPAccountant

    client = _client("dp-sgd", noise_multiplier=1.3, delta=1e-5, rounds=10)
    x, y = data.sample(D, 1, seed=0)
    client.share(x, y, torch.Generator())
    orders = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = orders * 10 / (2 * 1.3 ** 2)
    eps = rdp + np.log((orders - 1) / orders) - (np.log(1e-5) + np.log(orders)) / (orders - 1)
    assert client.cost()["epsilon"] == pytest.approx(eps[orders > 1].min(), rel=1e-6)


def test_gauss_noise_has_the_stated_scale():
    client = _client("gauss", sigma=0.05)
    x, y = data.sample(D, 1, seed=0)
    noisy = client.share(x, y, torch.Generator().manual_seed(1))
    clean = client.simulate(x, y)
    residual = torch.cat([(noisy[k] - clean[k]).flatten() for k in clean])
    assert residual.std().item() == pytest.approx(0.05, rel=0.05)
    assert math.isinf(client.cost()["epsilon"])


def test_bad_defense_values_are_refused():
    with pytest.raises(ConfigError, match="fraction"):
        _client("prune", fraction=1.0)
    with pytest.raises(ConfigError, match="clip > 0"):
        _client("dp-sgd", clip=0.0)
