import pytest
import torch
from torch import nn

from giabench import data, metrics, models, protocols
from giabench.attacks.cpa import CocktailParty, Whitened, layer_inputs, negentropy
from giabench.contracts import ServerView
from giabench.errors import NotApplicable
from giabench.registry import defenses


def _view(dataset, arch, params, batch, seed, defense="none", dparams=None):
    imageset = data.load(dataset)
    x, y = data.sample(imageset, batch, seed, "random")
    model = models.build(arch, params, imageset, "untrained", seed).eval()
    proto = protocols.build("fedsgd", {}, model)
    client = defenses.get(defense)(proto, **(dparams or {}))
    message = client.share(x, y, torch.Generator().manual_seed(seed))
    return ServerView(model, proto, message, client.public, imageset.shape, imageset.num_classes, batch, y), x, y


def _above(images, x, y, db):
    return sum(p["psnr"] > db for p in metrics.score(images, None, x, y, with_lpips=False)[1])


def test_cpa_separates_a_batch_of_sixteen_through_a_fully_connected_layer():
    view, x, y = _view("mnist-5k", "mlp", {"width": 256}, 16, 0)
    recon = CocktailParty(labels="known").reconstruct(view, None, torch.Generator().manual_seed(0))
    assert _above(recon.images, x, y, 25) >= 6  # measured: 11 of 16 (benchmarks/batch_cost.py, seed 0)


def test_the_bias_gradient_fixes_each_source_sign_and_scale_exactly():
    """With the true unmixing, X^T = diag(a)^-1 M G returns the inputs themselves, not a rescaled copy."""
    view, x, _ = _view("mnist-5k", "mlp", {"width": 256}, 8, 1)
    grad_w, grad_b = view.message["net.layers.1.weight"].double(), view.message["net.layers.1.bias"].double()
    live = grad_w.abs().amax(dim=1) > 0
    white = Whitened(grad_w[live], 8)
    inputs = ((x - view.model.mean) / view.model.std).flatten(1).double()
    truth = (inputs - inputs.mean(dim=1, keepdim=True)) @ torch.linalg.pinv(white.signals)
    recovered = white.sources(truth / truth.norm(dim=1, keepdim=True), grad_b[live])
    assert torch.allclose(recovered, inputs, atol=1e-4)


def test_negentropy_is_zero_for_gaussian_and_positive_for_sparse_signals():
    gaussian = torch.randn(1, 200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sparse = torch.zeros(1, 200_000, dtype=torch.float64)
    sparse[0, ::10] = 10 ** 0.5  # unit variance, 10 % non-zero
    assert negentropy(gaussian).item() < 1e-5 < negentropy(sparse).item()


def test_feature_inversion_finds_images_with_the_recovered_embeddings():
    """Past a convolutional trunk (cifarcnn: fc1 mixes 576 features per image) the sources are embeddings; feature
    inversion turns each into an image whose embedding points the same way."""
    view, x, _ = _view("cifar10-sample", "cifarcnn", {}, 2, 0)
    attack = CocktailParty(fi_iterations=300)
    _, layer, extra = attack.embeddings(view, torch.Generator().manual_seed(0))
    with torch.no_grad():
        truth = layer_inputs(view.model, layer, x)
    images = attack.invert_features(view, layer, truth.double(), torch.Generator().manual_seed(0))
    with torch.no_grad():
        reached = nn.functional.cosine_similarity(layer_inputs(view.model, layer, images), truth, dim=1)
    assert not extra["first_layer"] and reached.min() > 0.95


def test_cpa_through_dp_noise_recovers_no_image():
    view, x, y = _view("mnist-5k", "mlp", {"width": 256}, 8, 0, "dp-sgd", {"clip": 1.0, "noise_multiplier": 1.0})
    recon = CocktailParty(iterations=300).reconstruct(view, None, torch.Generator().manual_seed(0))
    assert _above(recon.images, x, y, 25) == 0


@pytest.mark.parametrize(("net", "batch", "reason"), [
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10)), 16, "8 units, fewer mixtures"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 64, bias=False), nn.ReLU(), nn.Linear(64, 10)), 4, "no bias"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten()), 4, "fully connected layer"),
])
def test_cpa_states_why_it_does_not_apply(net, batch, reason):
    assert reason in CocktailParty().applies(net, (1, 28, 28), "fedsgd", batch)


def test_cpa_refuses_a_message_without_the_layer_in_the_clear():
    view, _, _ = _view("mnist-5k", "mlp", {"width": 64}, 4, 0)
    view.message = {}
    with pytest.raises(NotApplicable, match="in the clear"):
        CocktailParty().reconstruct(view, None, torch.Generator())
