import math
import os

import pytest
import torch

os.environ.setdefault("GIABENCH_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "giabench"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def gaussian_epsilon():
    """An accountant written apart from Opacus: T Gaussian releases with noise multiplier z (no subsampling) have RDP
    a T / (2 z^2) at order a (Mironov 2017); converted to (eps, delta) as Opacus does (Balle et al. 2020):
    eps = min_a rdp(a) + log((a-1)/a) - (log delta + log a) / (a - 1), over Opacus' default orders."""

    def epsilon(z: float, releases: int, delta: float) -> float:
        orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
        return min(a * releases / (2 * z * z) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
                   for a in orders)

    return epsilon


@pytest.fixture
def resolve_defense():
    """A defense's parameters checked as a suite checks them (``giabench.components``): its ranges, and its
    protocol (fedsgd, or fedavg with one epoch of minibatches of 2) and batch size."""
    from giabench import components

    def resolve(name: str, protocol: str = "fedsgd", batch_size: int = 4, **params):
        proto = {"epochs": 1, "batch_size": 2, "lr": 0.1} if protocol == "fedavg" else {}
        return components.defense(name, params, components.protocol(protocol, proto), batch_size)

    return resolve
