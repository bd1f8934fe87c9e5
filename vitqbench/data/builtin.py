"""Built-in offline sets, as uint8 images that go through the same preprocessing as files.

- ``digits``: scikit-learn's 1797 8x8 handwritten digits (grayscale, 0-16 scaled to 0-255).
  ``digits:train`` / ``digits:test`` are a fixed stratified 80/20 split (``train_test_split``,
  ``random_state=0``), each kept in the original order.
- ``fashion-mnist``: the 10k test images; ``fashion-mnist:train`` the 60k training images, read from
  the IDX files in ``$VITQBENCH_FASHION_MNIST`` or /usr/share/datasets/fashion-mnist (Debian's
  ``dataset-fashion-mnist``).
- ``photos``: square patches (128 px, stride 64, and 192 px, stride 96) cut from scikit-learn's two
  bundled sample photos (china.jpg, flower.jpg): 120 real photographs, a far-OOD set for the demo.
- ``noise:gaussian`` / ``noise:uniform``: synthetic 224x224 RGB noise, ``n`` images (default 1000),
  image ``i`` drawn from ``default_rng([seed, i])`` so any subset is reproducible. Marked synthetic.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from vitqbench.data.dataset import Dataset
from vitqbench.errors import VitqbenchError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
NOISE_KINDS = ("gaussian", "uniform")
NOISE_SIZE = 224
NOISE_DEFAULT_N = 1000
NOISE_MAX_N = 100_000  # 15 GB of decoded 224x224 images: more is a typo, not a study
PHOTO_PATCHES = ((128, 64), (192, 96))  # (side, stride)
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _array_dataset(spec, name, images, labels, class_names, origin, synthetic=False) -> Dataset:
    paths = [f"{name}/{i:05d}" for i in range(len(images))]
    return Dataset(
        name=name,
        spec=spec,
        sources=images,
        paths=paths,
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        ids=paths,
        origin=origin,
        synthetic=synthetic,
    )


def _array_hash(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False  # shared by every digits dataset
    return images, labels


def digits(spec: str, split: str | None) -> Dataset:
    from sklearn.model_selection import train_test_split

    images, labels = _digits_arrays()
    origin = f"digits:{_array_hash(images, labels)}"
    full = _array_dataset(spec, "digits", images, labels, [str(c) for c in range(10)], origin)
    if split is None:
        return full
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return full.subset(np.sort(train if split == "train" else test), spec)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array, checking its header against its size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise VitqbenchError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise VitqbenchError(f"{path} is not a uint8 IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise VitqbenchError(f"{path} is truncated ({body.size} of {int(np.prod(dims))} values)")
    return body.reshape(dims)


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("VITQBENCH_FASHION_MNIST", FASHION_MNIST_DIR))


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise VitqbenchError(
        f"fashion-mnist file {stem}[.gz] not found in {folder} "
        "(install Debian's dataset-fashion-mnist or set VITQBENCH_FASHION_MNIST=DIR)"
    )


def fashion_mnist(spec: str, split: str | None) -> Dataset:
    folder = fashion_mnist_dir()
    prefix = "train" if split == "train" else "t10k"
    image_file = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    label_file = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = _read_idx(image_file), _read_idx(label_file)
    if images.ndim != 3 or labels.shape != (len(images),):
        raise VitqbenchError(f"{image_file} and {label_file} do not hold matching images and labels")
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in (image_file, label_file)]
    name = "fashion-mnist" + (":train" if split == "train" else "")
    return _array_dataset(spec, name, images, labels, FASHION_MNIST_CLASSES, f"fashion-mnist:{stats}")


@lru_cache(maxsize=1)
def _photo_patches() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    patches = []
    for image in load_sample_images().images:
        h, w = image.shape[:2]
        for side, stride in PHOTO_PATCHES:
            for top in range(0, h - side + 1, stride):
                for left in range(0, w - side + 1, stride):
                    patches.append(np.ascontiguousarray(image[top : top + side, left : left + side]))
    return tuple(patches)


def photos(spec: str) -> Dataset:
    patches = list(_photo_patches())
    origin = f"photos:{PHOTO_PATCHES}:{_array_hash(*patches)}"
    return _array_dataset(spec, "photos", patches, None, None, origin)


def noise(spec: str, kind: str, n: int | None, seed: int) -> Dataset:
    count = NOISE_DEFAULT_N if n is None else n
    recipes = [("noise", kind, seed, i) for i in range(count)]
    origin = f"noise:{kind}:{seed}:{NOISE_SIZE}"
    return _array_dataset(spec, f"noise:{kind}", recipes, None, None, origin, synthetic=True)


def noise_image(kind: str, seed: int, index: int) -> np.ndarray:
    """Image ``index`` of a noise set: uint8 [224, 224, 3], independent of every other image."""
    rng = np.random.default_rng([seed, index])
    shape = (NOISE_SIZE, NOISE_SIZE, 3)
    if kind == "uniform":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return np.clip(np.rint(rng.normal(127.5, 64.0, shape)), 0, 255).astype(np.uint8)
