"""Built-in offline sets: digits, fashion-mnist, photos, noise, and their spec options."""

from __future__ import annotations

import numpy as np
import pytest
from datahelpers import TINY

from vitqbench.data import decoded_images, iter_batches, load_dataset
from vitqbench.data.builtin import fashion_mnist_dir
from vitqbench.errors import VitqbenchError
from vitqbench.metadata import DataConfig

GRAY = DataConfig(input_size=(1, 16, 16), mean=(0.5,), std=(0.5,), crop_pct=1.0)


def test_digits_splits_are_fixed_stratified_and_disjoint():
    full, train, test = (load_dataset(s) for s in ("digits", "digits:train", "digits:test"))
    assert (len(full), len(train), len(test)) == (1797, 1437, 360)
    assert not set(train.paths) & set(test.paths) and set(train.paths) | set(test.paths) == set(full.paths)
    assert np.bincount(test.labels).min() >= 35  # stratified: every digit in the test split
    assert load_dataset("digits:test").paths == test.paths
    assert full.class_names == [str(d) for d in range(10)] and not full.synthetic


def test_digits_class_selection_keeps_labels():
    dataset = load_dataset("digits:test:0,2,7-8")
    assert set(dataset.labels.tolist()) == {0, 2, 7, 8}
    assert len(load_dataset("digits:0-5:n=100:seed=2")) == 100


def test_digits_pixels_are_the_sklearn_images(tmp_path):
    from sklearn.datasets import load_digits

    dataset = load_dataset("digits:n=5")
    images = decoded_images(dataset, DataConfig((1, 8, 8), (0.5,), (0.5,), crop_pct=1.0), tmp_path, False)
    index = [int(p.split("/")[-1]) for p in dataset.paths]
    expected = np.rint(load_digits().images[index] * 255 / 16).astype(np.uint8)
    assert np.array_equal(images[..., 0], expected)  # 8x8 at crop_pct 1.0: no resampling at all
    rgb = decoded_images(dataset, TINY, tmp_path, False)
    assert np.array_equal(rgb[..., 0], rgb[..., 2])  # grayscale becomes 3 equal channels


def test_photos_are_real_patches(tmp_path):
    dataset = load_dataset("photos")
    assert len(dataset) == 120 and dataset.labels is None and not dataset.synthetic
    images = decoded_images(dataset, TINY, tmp_path, False)
    assert images.std() > 20 and len({images[i].tobytes() for i in range(len(images))}) == 120
    assert len(load_dataset("photos:n=10")) == 10


def test_noise_is_seeded_synthetic_and_prefix_stable(tmp_path):
    small, big = load_dataset("noise:gaussian:n=3"), load_dataset("noise:gaussian:n=8")
    assert small.synthetic and small.labels is None and len(big) == 8
    first = next(iter_batches(small, GRAY, cache_dir=tmp_path, progress=False)).images
    again = next(iter_batches(big, GRAY, batch_size=3, cache=False, progress=False)).images
    assert np.array_equal(first, again)  # image i does not depend on n
    other = next(iter_batches(load_dataset("noise:gaussian:n=3:seed=1"), GRAY, cache=False, progress=False))
    assert not np.array_equal(first, other.images)
    native = DataConfig(input_size=(3, 224, 224), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    uniform = decoded_images(load_dataset("noise:uniform:n=2"), native, tmp_path, False)  # not resampled
    counts = np.bincount(uniform.reshape(-1), minlength=256)
    assert counts.min() > 0.5 * counts.mean() and len(load_dataset("noise:uniform")) == 1000


@pytest.mark.parametrize(
    "spec, message",
    [
        ("noise", "say which noise"),
        ("noise:pink", "say which noise"),
        ("noise:gaussian:0-3", "no splits or classes"),
        ("photos:train", "has no train/test split"),
        ("photos:0-2", "no labels to select classes"),
        ("digits:n=5000", "asks for n=5000 but has only 1797"),
        ("digits:ten", "unknown option 'ten'"),
    ],
)
def test_bad_builtin_specs(spec, message):
    with pytest.raises(VitqbenchError, match=message):
        load_dataset(spec)


needs_fashion = pytest.mark.skipif(
    not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST IDX files absent from {fashion_mnist_dir()} (apt install dataset-fashion-mnist)",
)


@needs_fashion
def test_fashion_mnist_splits_and_subset(tmp_path):
    test = load_dataset("fashion-mnist")
    assert len(test) == 10000 and np.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names[0] == "T-shirt/top"
    subset = load_dataset("fashion-mnist:train:n=2000")
    assert len(subset) == 2000 and subset.labels.max() == 9
    assert load_dataset("fashion-mnist:train:n=2000").paths == subset.paths
    images = decoded_images(load_dataset("fashion-mnist:n=4"), GRAY, tmp_path, False)
    assert images.shape == (4, 16, 16, 1) and images.max() > 100


def test_fashion_mnist_missing_dir_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("VITQBENCH_FASHION_MNIST", str(tmp_path))
    with pytest.raises(VitqbenchError, match="t10k-images-idx3-ubyte.*VITQBENCH_FASHION_MNIST"):
        load_dataset("fashion-mnist")


def test_the_callers_seed_draws_subsets_unless_the_spec_names_one():
    default, seeded = load_dataset("digits:n=50"), load_dataset("digits:n=50", seed=3)
    assert default.paths == load_dataset("digits:n=50:seed=0", seed=3).paths  # the spec's own seed wins
    assert seeded.paths == load_dataset("digits:n=50:seed=3").paths != default.paths
    assert seeded.key != default.key
    noise = (load_dataset("noise:gaussian:n=2", seed=s) for s in (0, 1))
    assert len({d.key for d in noise}) == 2
