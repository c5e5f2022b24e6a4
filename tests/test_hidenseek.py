import pytest
import torch
from torch import nn

from giabench import components, data, metrics, models, protocols
from giabench.contracts import ServerView
from giabench.defenses.hidenseek import HideNSeek, global_mask, synflow_scores
from giabench.errors import ConfigError
from giabench.registry import attacks

D = data.load("mnist-sample")


def test_synflow_scores_match_a_hand_computed_two_layer_network():
    """f(x) = W2 W1 x with |W|: R = sum_i |W2_i| sum_j |W1_ij|, so S(W1_ij) = |W1_ij| |W2_i| and
    S(W2_i) = |W2_i| sum_j |W1_ij|."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
        net[1].weight.copy_(torch.tensor([[-4.0, 0.25]]))
    scores = synflow_scores(net, (2,))
    assert torch.allclose(scores["0.weight"], torch.tensor([[4.0, 8.0], [0.125, 0.75]]))
    assert torch.allclose(scores["1.weight"], torch.tensor([[12.0, 0.875]]))


@pytest.mark.parametrize("density", [0.05, 0.3])
def test_mask_has_the_requested_density(density):
    model = models.build("lenet", {}, D, "untrained", 0)
    client = HideNSeek(protocols.build("fedsgd", {}, model), density=density)
    kept = sum(float(m.sum()) for m in client.mask.values())
    total = sum(m.numel() for m in client.mask.values())
    assert abs(kept / total - density) < 1e-3
    flat = torch.cat([s.flatten() for s in synflow_scores(model, D.shape).values()])
    assert global_mask({"all": flat}, density)["all"].sum() == kept  # global, not per-layer, top-k


@pytest.mark.parametrize("upload", ["scores", "signs"])
@pytest.mark.parametrize("protocol", [{"name": "fedsgd"}, {"name": "fedavg", "epochs": 2, "batch_size": 1, "lr": 0.1}])
def test_share_and_simulate_agree_and_only_kept_weights_are_sent(upload, protocol):
    model = models.build("mlp", {"width": 16}, D, "untrained", 0).eval()
    proto = protocols.build(protocol["name"], {k: v for k, v in protocol.items() if k != "name"}, model)
    client = HideNSeek(proto, density=0.2, upload=upload, temperature=1e-6)
    x, y = D.images[:2], D.labels[:2]
    shared, simulated = client.share(x, y, torch.Generator()), client.simulate(x, y)
    for k, v in shared.items():
        assert torch.all(v[client.mask[k] == 0] == 0)
        assert torch.allclose(v, simulated[k], atol=1e-5)
    kept = sum(int(m.sum()) for m in client.mask.values())
    assert client.cost()["bytes"] == (4 * kept if upload == "scores" else -(-kept // 8))


def test_scores_upload_is_a_rescaled_sparse_gradient_that_ig_inverts():
    model = models.build("mlp", {"width": 64}, D, "untrained", 0).eval()
    proto = protocols.build("fedsgd", {}, model)
    client = HideNSeek(proto, density=0.5)
    x, y = D.images[:1], D.labels[:1]
    view = ServerView(model, proto, client.share(x, y, torch.Generator()), client.public, D.shape, 10, 1, y)
    recon = attacks.get("ig")(iterations=200, tv=0.0).reconstruct(view, client.simulate, torch.Generator())
    assert metrics.score(recon.images, recon.labels, x, y, with_lpips=False)[0]["psnr"] > 20


def test_bad_parameters_are_named():
    with pytest.raises(ConfigError, match="upload must be one of scores, signs, got 'weights'"):
        components.defense("hidenseek", {"upload": "weights"}, components.protocol("fedsgd", {}), 1)
