import pytest
import torch

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
    with pytest.raises(ConfigError, match="untrained, trained:N or checkpoint:PATH"):
        models.build("lenet", {}, MNIST, "pretrained", seed=0)
