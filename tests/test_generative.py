import json
import os
import shutil

import pytest
import torch

from giabench import components, data, metrics, models, protocols
from giabench.attacks.generative import project_l1, ramped_lr
from giabench.attacks.generators import SHIPPED, WEIGHTS, checkpoint, load, training
from giabench.attacks.generators.dcgan import DCGANGenerator
from giabench.contracts import ServerView
from giabench.errors import ConfigError, NotApplicable
from giabench.registry import attacks

MNIST = data.load("mnist-sample")


def test_l1_projection_is_the_nearest_point_of_the_ball():
    v = torch.tensor([[3.0, 1.0], [1.0, 1.0], [0.2, -0.1], [-2.0, 2.0]])
    out = project_l1(v, 1.0)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.2, -0.1], [-0.5, 0.5]]))
    big = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    projected = project_l1(big, 10.0)
    assert torch.allclose(projected.flatten(1).abs().sum(1), torch.full((3,), 10.0), atol=1e-4)
    for _ in range(20):  # no point of the ball is closer
        other = project_l1(torch.randn(3, 4, 5, 5), 10.0)
        assert torch.all((big - projected).flatten(1).norm(dim=1) <= (big - other).flatten(1).norm(dim=1) + 1e-5)


def test_learning_rate_ramps_up_then_down():
    assert ramped_lr(0.0, 0.1) == 0.0
    assert ramped_lr(0.2, 0.1) == pytest.approx(0.1)
    assert ramped_lr(0.999, 0.1) < 1e-3


def _mnist_view(batch=1, width=64):
    model = models.build("mlp", {"width": width}, MNIST, "untrained", 0).eval()
    proto = protocols.build("fedsgd", {}, model)
    x, y = MNIST.images[:batch], MNIST.labels[:batch]
    return ServerView(model, proto, proto.update(x, y), {}, MNIST.shape, 10, batch, y), proto, x, y


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_generators_reload_bit_exactly_and_match_their_checksum(name):
    path = WEIGHTS / f"{name}.pt"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert path.stat().st_size < 10 * 2 ** 20
    assert checkpoint.sha256(path) == meta["sha256"]
    stored = torch.load(path, weights_only=True)
    net = checkpoint.load(path)
    for key, value in net.state_dict().items():
        assert torch.equal(value, stored[key].float() if stored[key].is_floating_point() else stored[key]), key
    z = torch.randn(3, net.latent_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(net(z), checkpoint.load(path)(z))
    assert tuple(net.shape) == {"dcgan-mnist": (1, 28, 28), "dcgan-patches": (3, 32, 32)}[name]


def test_a_tampered_or_malformed_checkpoint_is_refused(tmp_path):
    net = DCGANGenerator((1, 28, 28), latent_dim=8, width=8)
    path = tmp_path / "g.pt"
    checkpoint.save(net, path, {"width": 8})
    assert checkpoint.load(path).latent_dim == 8
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ConfigError, match="sha256"):
        checkpoint.load(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["latent_dim"] = "eight"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="latent_dim"):
        checkpoint.load(path)


def test_train_generator_is_deterministic_and_writes_its_record(tmp_path):
    runs = [training.train("mnist-sample", tmp_path / f"run{i}" / "g.pt", epochs=2, batch=8, width=8, latent_dim=8,
                           seed=3, threads=1, grid_every=1, show_progress=False) for i in range(2)]
    assert runs[0]["sha256"] == runs[1]["sha256"]
    assert runs[0]["training"]["seed"] == 3 and runs[0]["training"]["threads"] == 1
    written = sorted(p.name for p in (tmp_path / "run0").iterdir())
    assert written == ["g-samples-epoch001.png", "g-samples-epoch002.png", "g-samples.png", "g.json", "g.pt"]


def test_gifd_picks_its_best_stage_and_never_does_worse_than_the_latent():
    view, proto, x, y = _mnist_view()
    recon = attacks.get("gifd")(generator="dcgan-mnist", iterations=30).reconstruct(
        view, proto.update, torch.Generator().manual_seed(0))
    losses = recon.extra["stage_losses"][0]
    assert len(losses) == len(load("dcgan-mnist").stages)  # the latent and every intermediate feature
    assert recon.extra["objective"] == min(losses) <= losses[0]
    assert losses[recon.extra["stage"]] == recon.extra["objective"]
    assert recon.iterations == 30 * len(losses)


@pytest.mark.parametrize("name, params", [("gias", {"latent_iterations": 100, "finetune_iterations": 100}),
                                          ("gifd", {"iterations": 60})])
def test_gradient_based_generative_attacks_recover_an_in_distribution_digit(name, params):
    view, proto, x, y = _mnist_view()
    recon = attacks.get(name)(generator="dcgan-mnist", **params).reconstruct(
        view, proto.update, torch.Generator().manual_seed(0))
    assert metrics.score(recon.images, recon.labels, x, y, with_lpips=False)[0]["psnr"] > 18


def test_ggl_spends_its_budget_without_gradients_and_lowers_the_loss():
    view, proto, x, y = _mnist_view()
    recon = attacks.get("ggl")(generator="dcgan-mnist", budget=200, population=10).reconstruct(
        view, proto.update, torch.Generator().manual_seed(0))
    assert 190 < recon.iterations <= 200
    assert recon.trace[-1] < recon.trace[0]


def test_a_generator_of_another_image_shape_is_not_applicable():
    view, proto, *_ = _mnist_view()
    with pytest.raises(NotApplicable, match=r"\(3, 32, 32\)"):
        attacks.get("gifd")(generator="dcgan-patches").reconstruct(view, proto.update, torch.Generator())
    with pytest.raises(ConfigError, match="unknown generator"):
        components.attack("gias", {"generator": "stylegan9"})


def _tiny_biggan(folder):
    biggan = pytest.importorskip("pytorch_pretrained_biggan")
    config = biggan.BigGANConfig(output_dim=64, z_dim=8, class_embed_dim=8, channel_width=4, num_classes=10,
                                 layers=[(False, 16, 16), (True, 16, 8), (True, 8, 4), (True, 4, 2), (True, 2, 1)],
                                 attention_layer_position=2)
    torch.manual_seed(0)
    net = biggan.BigGAN(config)
    with torch.no_grad():
        for p in net.parameters():  # the package leaves some tensors uninitialized
            p.normal_(0, 0.1)
    os.makedirs(folder, exist_ok=True)
    (folder / "config.json").write_text(config.to_json_string())
    torch.save(net.state_dict(), folder / "pytorch_model.bin")
    return net.eval()


def test_biggan_loader_splits_the_package_model_into_stages_exactly(tmp_path, monkeypatch):
    from giabench.attacks.generators.biggan import load_biggan

    monkeypatch.setenv("GIABENCH_WEIGHTS", str(tmp_path))
    with pytest.raises(ConfigError, match="pytorch_model.bin"):
        load_biggan("biggan-deep-128")
    net = _tiny_biggan(tmp_path / "biggan-deep-128")
    staged = load_biggan("biggan-deep-128")
    z, y = torch.randn(2, 8), torch.tensor([1, 7])
    reference = (net(z, torch.nn.functional.one_hot(y, 10).float(), 1.0) + 1) / 2
    assert torch.allclose(staged(z, y), reference, atol=1e-6)
    cond = staged.condition(y, z)
    assert torch.allclose(staged.decode(staged.features(z, 3, cond), 3, cond), reference, atol=1e-6)
    shutil.rmtree(tmp_path / "biggan-deep-128")


@pytest.mark.slow
def test_train_generator_reproduces_the_shipped_mnist_sample_grid(tmp_path):
    """The README's command; about 10 minutes on two CPU cores."""
    meta = json.loads((WEIGHTS / "dcgan-mnist.json").read_text())
    cfg = meta["training"]
    training.train(cfg["dataset"], tmp_path / "dcgan-mnist.pt", epochs=cfg["epochs"], batch=cfg["batch"],
                   lr=cfg["lr"], latent_dim=cfg["latent_dim"], width=cfg["width"], seed=cfg["seed"],
                   threads=cfg["threads"], show_progress=False)
    assert (tmp_path / "dcgan-mnist-samples.png").read_bytes() == (WEIGHTS / "dcgan-mnist-samples.png").read_bytes()


def test_natural_patches_are_seeded_crops_of_the_bundled_photos():
    first, again = data.natural_patches(count=40, seed=5), data.natural_patches(count=40, seed=5)
    assert first.images.shape == (40, 3, 32, 32) and torch.equal(first.images, again.images)
    assert 0 <= float(first.images.min()) and float(first.images.max()) <= 1
    assert int(first.labels.max()) < len(first.classes) and "astronaut" in first.classes
    assert not torch.equal(first.images, data.natural_patches(count=40, seed=6).images)


def test_train_generator_command_rejects_bad_arguments(capsys):
    from giabench.app.cli import main

    assert main(["train-generator", "--dataset", "mnist-sample", "--out", "g.pth"]) == 2
    assert "must end in .pt" in capsys.readouterr().err
    assert main(["train-generator", "--dataset", "mnist-sample", "--out", "g.pt", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
