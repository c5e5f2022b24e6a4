"""FedLeak: the partial matching sees only the largest entries of each layer, the generator is the cell's own draw,
and the attack rebuilds a digit through a fully connected network."""

import torch

from giabench import data, metrics, models, protocols
from giabench.attacks.fedleak import FedLeak, UntrainedGenerator, partial_distance
from giabench.contracts import ServerView
from giabench.registry import defenses


def test_only_the_largest_half_of_each_layer_is_matched():
    sim = {"w": torch.tensor([4.0, -3.0, 0.2, 0.1]), "b": torch.tensor([1.0, 0.5])}
    obs = {"w": torch.tensor([4.0, -3.0, 5.0, -7.0]), "b": torch.tensor([1.0, -9.0])}
    assert float(partial_distance(sim, obs, 0.5)) < 1e-6  # the small entries, where they differ, are not matched
    assert float(partial_distance(sim, obs, 1.0)) > 1.0


def test_the_generator_is_drawn_from_the_cell_s_generator_and_leaves_torch_s_own_alone():
    state = torch.get_rng_state()
    attack = FedLeak(width=8)
    view = ServerView(None, None, {}, {}, (1, 28, 28), 10, 3, None, None, None)
    with torch.no_grad():
        first, second = (attack._generator(view, torch.Generator().manual_seed(5))() for _ in range(2))
    assert torch.equal(first, second) and first.shape == (3, 1, 28, 28) and 0 <= float(first.min())
    assert float(first.max()) <= 1 and torch.equal(torch.get_rng_state(), state)
    assert UntrainedGenerator(2, (3, 32, 32), 8, torch.Generator())().shape == (2, 3, 32, 32)


def test_fedleak_rebuilds_a_digit_through_a_fully_connected_network():
    images = data.load("mnist-sample")
    model = models.build("mlp", {"width": 64}, images, "untrained", seed=0)
    client = defenses.get("none")(protocols.build("fedsgd", {}, model))
    scores = []
    for seed in (0, 1):
        x, y = images.images[seed:seed + 1], images.labels[seed:seed + 1]
        message = client.share(x, y, torch.Generator())
        view = ServerView(model, client.protocol, message, {}, images.shape, 10, 1, y, None, None)
        recon = FedLeak(iterations=150, width=16).reconstruct(view, client.simulate, torch.Generator().manual_seed(0))
        scores.append(metrics.psnr(float(((recon.images - x) ** 2).mean())))
    assert min(scores) > 20, scores  # 8 smoke seeds: 28.5 dB mean


def test_fedleak_runs_against_a_client_that_trains_inside_its_simulation():
    """HideNseek's simulation differentiates its local training: FedLeak's final objective must keep autograd on."""
    images = data.load("mnist-sample")
    model = models.build("mlp", {"width": 16}, images, "untrained", seed=0)
    client = defenses.get("hidenseek")(protocols.build("fedsgd", {}, model))
    x, y = images.images[:1], images.labels[:1]
    view = ServerView(model, client.protocol, client.share(x, y, torch.Generator()), dict(client.public),
                      images.shape, 10, 1, y, None, None)
    recon = FedLeak(iterations=3, width=8).reconstruct(view, client.simulate, torch.Generator().manual_seed(0))
    assert recon.images.shape == x.shape and torch.isfinite(torch.tensor(recon.extra["objective"]))
