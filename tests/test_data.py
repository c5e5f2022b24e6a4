import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from giabench import data
from giabench.errors import ConfigError


def test_cifar10_sample_is_the_first_twenty_test_images():
    d = data.load("cifar10-sample")
    assert d.images.shape == (20, 3, 32, 32)
    assert d.labels.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
    assert 0 <= d.images.min() and d.images.max() <= 1
    assert d.classes[3] == "cat" and len(d.mean) == 3


@pytest.mark.parametrize("name,shape,n", [("cifar100-sample", (3, 32, 32), 20), ("mnist-sample", (1, 28, 28), 20),
                                          ("fmnist-sample", (1, 28, 28), 20), ("mnist-5k", (1, 28, 28), 5000),
                                          ("lfw-faces", (1, 25, 25), 200)])
def test_embedded_sets_load(name, shape, n):
    d = data.load(name)
    assert d.shape == shape and len(d) == n
    assert int(d.labels.max()) < d.num_classes


def test_mnist_5k_has_500_digits_per_class():
    assert torch.bincount(data.load("mnist-5k").labels).tolist() == [500] * 10


def test_imagenet_sample_is_resized():
    d = data.load("imagenet-sample", size=32)
    assert d.shape == (3, 32, 32) and d.num_classes == 1000


def test_sample_is_deterministic_and_selects_as_asked():
    d = data.load("cifar10-sample")
    x1, y1 = data.sample(d, 4, seed=3)
    x2, y2 = data.sample(d, 4, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    _, unique = data.sample(d, 8, seed=0, labels="unique")
    assert len(set(unique.tolist())) == 8
    _, ordered = data.sample(d, 4, seed=1, labels="ordered")
    assert ordered.tolist() == [6, 6, 1, 6]


def test_sample_rejects_impossible_batches():
    d = data.load("cifar10-sample")
    with pytest.raises(ConfigError, match="larger than dataset cifar10-sample"):
        data.sample(d, 21, seed=0)
    with pytest.raises(ConfigError, match="unique labels"):
        data.sample(d, 9, seed=0, labels="unique")  # the sample holds 8 classes


def _write_idx(path, array, magic):
    with gzip.open(path, "wb") as handle:
        handle.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape))
        handle.write(array.astype(np.uint8).tobytes())


def test_torchvision_mnist_reads_real_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    for split in ("train", "t10k"):  # torchvision checks that both splits are present
        _write_idx(raw / f"{split}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte.gz", np.array([1, 2, 3, 4, 5]), 2049)
        for name in (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"):
            (raw / name).write_bytes(gzip.open(raw / f"{name}.gz").read())
    d = data.load("mnist", root=str(tmp_path))
    assert d.labels.tolist() == [1, 2, 3, 4, 5]
    assert torch.allclose(d.images[0, 0] * 255, torch.tensor(images[0], dtype=torch.float32))


def test_idx_files_lying_in_the_root_load_without_torchvision_as_debian_installs_them(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, 2051)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([9, 0, 0, 3]), 2049)
    d = data.load("fashion-mnist", root=str(tmp_path), split="train")
    assert d.labels.tolist() == [9, 0, 0, 3] and d.source == f"idx:{tmp_path}"
    assert torch.allclose(d.images[3, 0] * 255, torch.tensor(images[3], dtype=torch.float32))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" + b"\0\0\0\x09" * 3))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1]), 2049)
    with pytest.raises(ConfigError, match="0 data bytes where the header's shape"):
        data.load("fashion-mnist", root=str(tmp_path), split="test")


def test_torchvision_cifar10_reads_real_batch_files(tmp_path, monkeypatch):
    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"data": pixels, "labels": [7, 1, 2]}, handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": data.CIFAR10_CLASSES}, handle, protocol=2)
    # torchvision checks the md5 sums of the real CIFAR files; these are small files in the same format
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    d = data.load("cifar10", root=str(tmp_path))
    assert d.shape == (3, 32, 32) and d.labels.tolist() == [7, 1, 2]
    assert torch.allclose(d.images[1, 0].flatten() * 255, torch.tensor(pixels[1, :1024], dtype=torch.float32))


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="--data-root"):
        data.load("cifar10")
    with pytest.raises(ConfigError, match="--download"):
        data.load("cifar100", root=str(tmp_path))


def test_image_folder(tmp_path):
    for cls, color in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (40, 30), color).save(tmp_path / cls / "a.png")
    d = data.load(f"folder:{tmp_path}", size=16)
    assert d.shape == (3, 16, 16) and d.classes == ["cats", "dogs"]
    assert d.images[0, 0].mean() > 0.99 and d.images[1, 2].mean() > 0.99
