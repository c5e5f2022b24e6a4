import pytest
import torch
from torch import nn

from giabench import data, models
from giabench.errors import ConfigError

CIFAR = data.load("cifar10-sample")
MNIST = data.load("mnist-sample")


@pytest.mark.parametrize("name", ["lenet", "convnet", "resnet18", "mlp"])
@pytest.mark.parametrize("imageset", [CIFAR, MNIST], ids=["cifar", "mnist"])
def test_every_model_classifies_every_shape(name, imageset):
    params = {"width": 8} if name == "convnet" else {}
    clf = models.build(name, params, imageset, "untrained", seed=0)
    assert clf(imageset.images[:2]).shape == (2, imageset.num_classes)
    assert clf.classifier_weight in dict(clf.named_parameters())


def test_seeded_init_is_reproducible_and_seed_dependent():
    a = models.build("lenet", {}, CIFAR, "untrained", seed=1).state_dict()
    b = models.build("lenet", {}, CIFAR, "untrained", seed=1).state_dict()
    c = models.build("lenet", {}, CIFAR, "untrained", seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_normalization_lives_inside_the_wrapper():
    clf = models.build("mlp", {"width": 8}, CIFAR, "untrained", seed=0)
    x = CIFAR.images[:1]
    expected = clf.net((x - torch.tensor(CIFAR.mean).view(1, 3, 1, 1)) / torch.tensor(CIFAR.std).view(1, 3, 1, 1))
    assert torch.allclose(clf(x), expected)


def test_trained_state_is_cached_and_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("GIABENCH_CACHE", str(tmp_path))
    untrained = models.build("lenet", {}, MNIST, "untrained", seed=0)
    trained = models.build("lenet", {}, MNIST, "trained:30", seed=0)
    assert len(list((tmp_path / "models").glob("*.pt"))) == 1
    again = models.build("lenet", {}, MNIST, "trained:30", seed=0)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in trained.state_dict().items())
    loss = torch.nn.functional.cross_entropy
    assert loss(trained(MNIST.images), MNIST.labels) < loss(untrained(MNIST.images), MNIST.labels)


def test_checkpoint_round_trip_and_rejections(tmp_path):
    clf = models.build("mlp", {"width": 8}, MNIST, "untrained", seed=3)
    path = tmp_path / "ok.pt"
    torch.save(clf.state_dict(), path)
    loaded = models.build("mlp", {"width": 8}, MNIST, f"checkpoint:{path}", seed=0)
    assert torch.equal(loaded.net.layers[1].weight, clf.net.layers[1].weight)
    (tmp_path / "text.pt").write_text("not a tensor file")
    with pytest.raises(ConfigError, match="not a torch tensor file"):
        models.build("mlp", {"width": 8}, MNIST, f"checkpoint:{tmp_path / 'text.pt'}", seed=0)
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not fit the model"):
        models.build("mlp", {"width": 8}, MNIST, f"checkpoint:{tmp_path / 'other.pt'}", seed=0)


def test_checkpoint_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"w": Payload()}, path)
    with pytest.raises(ConfigError, match="not a torch tensor file"):
        models.build("mlp", {"width": 8}, MNIST, f"checkpoint:{path}", seed=0)


def test_bad_state_names_the_forms():
    for state in ("pretrained", "trained:abc", "trained:", "checkpoint:", 5):
        with pytest.raises(ConfigError, match=r"state must be untrained, trained:N \(N whole SGD steps\) or "):
            models.build("lenet", {}, MNIST, state, seed=0)


def test_each_model_defaults_to_its_papers_init_and_others_are_options():
    def conv(net):
        return next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 3)

    default = models.build("convnet", {"width": 16}, CIFAR, "untrained", seed=0)
    he = models.build("convnet", {"width": 16, "init": "he"}, CIFAR, "untrained", seed=0)
    w, fan_in = conv(default).weight, conv(default).weight[0].numel()
    assert w.abs().max() <= 1 / fan_in ** 0.5 + 1e-6  # PyTorch's Kaiming-uniform with a = sqrt(5), as IG's code
    fan_out = conv(he).out_channels * 9
    assert conv(he).weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    lenet = models.build("lenet", {}, CIFAR, "untrained", seed=0)
    flat = torch.cat([p.detach().flatten() for p in lenet.parameters()]).abs()
    assert 0.49 < flat.max() <= 0.5 and float(flat.mean()) == pytest.approx(0.25, abs=0.01)  # DLG's U(-0.5, 0.5)
    resnet = models.build("resnet18", {}, CIFAR, "untrained", seed=0).net
    assert resnet.conv1.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.15)  # torchvision's He
    femnist = models.build("femnist-cnn", {}, MNIST, "untrained", seed=0).net  # Flax's LeCun normal, zero biases
    assert femnist.features[3].weight.std().item() == pytest.approx((1 / (32 * 9)) ** 0.5, rel=0.05)
    assert femnist.fc1.weight.abs().max() <= 2 * (1 / femnist.fc1.in_features) ** 0.5 / 0.8796 + 1e-6
    assert all(bool((m.bias == 0).all()) for m in (femnist.features[0], femnist.features[3], femnist.fc2))
    with pytest.raises(ConfigError, match="init must be one of"):
        models.build("mlp", {"init": "glorot"}, CIFAR, "untrained", seed=0)


@pytest.mark.parametrize("name", sorted(n for n in set(models.models.names()) - {"factory"}
                                         if getattr(models.models.get(n), "modalities", ("image",)) == ("image",)))
def test_every_untrained_zoo_model_has_fresh_batch_norm_buffers(name):
    """As its paper's code builds it: running mean 0, running variance 1, no batch tracked (Inverting Gradients and
    breaching evaluate eval-mode BN at these)."""
    net = models.build(name, {}, data.load("cifar10-sample"), "untrained", 0)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        assert (m.running_mean == 0).all() and (m.running_var == 1).all() and m.num_batches_tracked == 0, name
    assert norms or name != "convnet"
