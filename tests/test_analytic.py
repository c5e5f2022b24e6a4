import pytest
import torch
from torch import nn

from giabench import data, metrics, models, protocols
from giabench.attacks.analytic import FCInvert, group_candidates
from giabench.contracts import ServerView
from giabench.errors import NotApplicable
from giabench.registry import defenses

D = data.load("cifar10-sample")


def _view(arch, params, batch, seed, defense="none", dparams=None):
    x, y = data.sample(D, batch, seed, "ordered")
    model = models.build(arch, params, D, "untrained", seed).eval()
    proto = protocols.build("fedsgd", {}, model)
    client = defenses.get(defense)(proto, **(dparams or {}))
    message = client.share(x, y, torch.Generator())
    return ServerView(model, proto, message, client.public, D.shape, D.num_classes, batch, None), client, x, y


@pytest.mark.parametrize("seed", range(4))
def test_fc_invert_is_exact_on_an_mlp_at_batch_one(seed):
    view, client, x, y = _view("mlp", {"width": 256}, 1, seed)
    recon = FCInvert().reconstruct(view, client.simulate, torch.Generator())
    summary, _, _ = metrics.score(recon.images, recon.labels, x, y, with_lpips=False)
    assert summary["psnr"] > 60 and summary["label_acc"] == 1.0


def test_fc_invert_separates_samples_that_own_rows():
    """Hand-built layer: sample k alone activates rows 3k..3k+2, so every sample is recovered exactly."""
    x = torch.rand(3, 1, 2, 2)
    features = x.flatten(1)
    layer = nn.Linear(4, 9)
    owner = torch.arange(9) // 3
    with torch.no_grad():
        layer.weight.copy_(torch.rand(9, 4))
        out = layer(features)
        layer.bias.copy_(-out.gather(0, owner[None]).squeeze(0) + 0.5)  # row i fires for its owner (and maybe others)
    delta = torch.zeros(3, 9)
    delta[owner, torch.arange(9)] = torch.linspace(0.1, 0.9, 9)  # only the owner back-propagates into its rows
    grad_w = delta.T @ features / 3
    grad_b = delta.sum(0) / 3
    candidates = grad_w / grad_b[:, None]
    recovered = group_candidates(candidates.double(), grad_b.abs().double(), 3, 1e-6)
    order = metrics.match(recovered.float().view(3, 1, 2, 2), x)
    assert torch.allclose(recovered[order].float(), features, atol=1e-6)


def test_fc_invert_refuses_a_convolutional_first_layer():
    view, client, _, _ = _view("lenet", {}, 1, 0)
    with pytest.raises(NotApplicable, match="first layer is fully connected"):
        FCInvert().reconstruct(view, client.simulate, torch.Generator())
