import math

import pytest
import torch

from giabench import data, models, protocols
from giabench.defenses.diff2 import DIFF2, epsilon
from giabench.errors import ConfigError

D = data.load("mnist-sample")


def _client(**params):
    model = models.build("mlp", {"width": 16}, D, "untrained", 0).eval()
    return DIFF2(protocols.build("fedsgd", {}, model), **params)


def test_without_clipping_or_noise_the_telescoped_estimator_is_the_current_gradient():
    """restart at x_0 plus the differences x_1 - x_0, ..., x_r - x_{r-1} telescopes to grad f(x_r)."""
    client = _client(clip1=1e6, clip2=1e6, noise1=0.0, noise2=0.0, rounds=3, step=0.05)
    x, y = D.images[:4], D.labels[:4]
    message = client.share(x, y, torch.Generator())
    plain = client.protocol.gradient(client.protocol.params, x, y)
    assert all(torch.allclose(message[k], plain[k], atol=1e-6) for k in plain)
    pairs = zip(client.iterates, client.iterates[1:], strict=False)
    assert all(not torch.equal(a[k], b[k]) for a, b in pairs for k in a)


@pytest.mark.parametrize("view", ["telescoped", "difference"])
def test_share_and_simulate_agree_without_noise(view):
    client = _client(noise1=0.0, noise2=0.0, rounds=2, view=view, clip2=0.5)
    x, y = D.images[:3], D.labels[:3]
    shared, simulated = client.share(x, y, torch.Generator()), client.simulate(x, y)
    assert all(torch.allclose(shared[k], simulated[k], atol=1e-6) for k in shared)


def test_difference_noise_scales_with_the_iterate_distance():
    near, far = (_client(rounds=1, view="difference", step=s, noise2=1.0) for s in (0.001, 0.1))
    x, y = D.images[:2], D.labels[:2]
    noise = [torch.cat([(c.share(x, y, torch.Generator().manual_seed(0))[k] - c.simulate(x, y)[k]).flatten()
                        for k in c.protocol.params]).norm() for c in (near, far)]
    assert 50 < float(noise[1] / noise[0]) < 200


def test_epsilon_matches_an_independent_rdp_computation():
    """R = 100, T = 10, z1 = 3, z2 = 6 (the spec's check): Gaussian RDP sum_k n_k a / (2 z_k^2), converted as Opacus
    does; also above the exact GDP value 9.39 and near the spec's RDP figure."""
    z1, z2, delta = 3.0, 6.0, 1e-5
    got = epsilon(z1, z2, 10, 100, delta)
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = [a * (10 / (2 * z1 ** 2) + 90 / (2 * z2 ** 2)) for a in orders]
    expected = min(r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
                   for a, r in zip(orders, rdp, strict=True))
    assert math.isclose(got, expected, rel_tol=1e-6)
    assert 9.39 < got < 10.2
    assert math.isclose(epsilon(5.0, 5.0, 10, 100, delta), 10.73, abs_tol=0.01)


def test_bad_parameters_are_named(resolve_defense):
    with pytest.raises(ConfigError, match=r"rounds must be < period \(10\), got 10"):
        resolve_defense("diff2", rounds=10, period=10)
    with pytest.raises(ConfigError, match="rounds must be >= 1 with view difference, got 0"):
        resolve_defense("diff2", rounds=0, view="difference")
    with pytest.raises(ConfigError, match="needs protocol fedsgd"):
        resolve_defense("diff2", "fedavg")
