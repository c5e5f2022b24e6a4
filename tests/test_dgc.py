"""Deep Gradient Compression: what stays on the client is sent later, the adaptive attacker replays the recursion
exactly, and the residuals buy back the accuracy that one-round top-k loses."""

import pytest
import torch
import yaml

from giabench import data, models, protocols, utility
from giabench.defenses.dgc import round_density
from giabench.errors import ConfigError
from giabench.registry import defenses
from giabench.utility_config import config_from_mapping

D = data.load("mnist-sample")


def _client(name, **params):
    model = models.build("mlp", {"width": 16}, D, "untrained", seed=0).eval()
    return defenses.get(name)(protocols.build("fedsgd", {}, model), **params)


def test_one_round_without_warm_up_is_top_k_pruning():
    dgc, prune = _client("dgc", density=0.01, warmup=0), _client("prune", fraction=0.99)
    x, y = data.sample(D, 2, seed=0)
    sent, pruned = dgc.share(x, y, torch.Generator()), prune.share(x, y, torch.Generator())
    assert all(torch.equal(sent[k], pruned[k]) for k in sent)


def test_nothing_is_lost_every_unsent_entry_waits_on_the_client():
    """With momentum 0, R rounds on one gradient g send R g minus the residual still held."""
    client, states = _client("dgc", density=0.05, momentum=0.0, warmup=0), [None]
    x, y = data.sample(D, 2, seed=0)
    g = client.protocol.update(x, y)
    sent = []
    for index in range(6):
        client.resume(states, 0, index)
        sent.append(client.share(x, y, torch.Generator()))
    residual = states[0][1]
    for k in g:
        assert torch.allclose(sum(s[k] for s in sent) + residual[k], 6 * g[k], atol=1e-6)
        assert (sent[-1][k] != 0).float().mean() <= 0.05 + 1 / g[k].numel()


def test_momentum_factor_masking_clears_the_momentum_of_every_sent_entry():
    client, states = _client("dgc", density=0.05, momentum=0.9, warmup=0), [None]
    x, y = data.sample(D, 2, seed=0)
    client.resume(states, 0, 0)
    sent = client.share(x, y, torch.Generator())
    momentum, residual = states[0]
    for k in sent:
        assert torch.all(momentum[k][sent[k] != 0] == 0) and torch.all(residual[k][sent[k] != 0] == 0)


def test_the_attacker_replays_earlier_rounds_and_warm_up_exactly():
    client = _client("dgc", density=0.01, momentum=0.9, dampening=0.5, clip=0.5, warmup=3, history=5)
    x, y = data.sample(D, 2, seed=0)
    shared = client.share(x, y, torch.Generator())
    z = x.clone().requires_grad_(True)
    simulated = client.simulate(z, y)
    assert all(torch.allclose(shared[k], simulated[k], atol=1e-6) for k in shared)
    sum(v.sum() for v in simulated.values()).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert [round_density(0.01, 3, t) for t in range(5)] == [0.25, 0.0625, 0.015625, 0.01, 0.01]
    assert len(client.public["masks"]) == 6


def test_a_simulation_before_any_message_and_fedavg_are_refused(resolve_defense):
    x, y = data.sample(D, 1, seed=0)
    with pytest.raises(RuntimeError, match="masks of every round"):
        _client("dgc").simulate(x, y)
    with pytest.raises(ConfigError, match="use protocol fedsgd"):
        resolve_defense("dgc", protocol="fedavg")
    with pytest.raises(ConfigError, match="density"):
        resolve_defense("dgc", density=0.0)


def test_residuals_recover_the_accuracy_one_round_top_k_loses(tmp_path):
    cfg = config_from_mapping(yaml.safe_load("""
dataset: mnist-5k
model: {name: mlp, width: 64}
protocol: fedsgd
server_lr: 0.2
clients: 4
rounds: 150
batch: 32
defenses:
  - {name: prune, fraction: 0.999}
  - {name: dgc, density: 0.001, dampening: 0.9}
"""), "test")
    rows = utility.run(cfg, tmp_path, show_progress=False).set_index("defense")
    assert rows.loc["dgc", "accuracy"] > rows.loc["prune", "accuracy"] + 0.1
    assert rows.loc["dgc", "bytes_per_round"] < 0.01 * rows.loc["none", "bytes_per_round"]
