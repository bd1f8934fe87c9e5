"""Streaming: batches, skip accounting, the decode cache (hits, invalidation, interruption), workers."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from datahelpers import TINY, write_class_folders, write_image

from vitqbench.data import decoded_images, iter_batches, load_dataset
from vitqbench.data import stream as stream_module
from vitqbench.errors import VitqbenchError


@pytest.fixture
def with_truncated(tmp_path):
    root = tmp_path / "imgs"
    write_class_folders(root, {"a": ["png", "jpeg", "truncated", "gray"], "b": ["cmyk", "rgba", "palette"]})
    return root


def _collect(dataset, cache_dir, **kwargs):
    batches = list(iter_batches(dataset, TINY, cache_dir=cache_dir, progress=False, **kwargs))
    if not batches:
        return batches, np.zeros(0, np.int64), np.zeros((0, 3, 32, 32), np.float32)
    return batches, np.concatenate([b.indices for b in batches]), np.concatenate([b.images for b in batches])


def _count_decodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = stream_module.decode_chunk

    def counting(sources, geometry):
        calls.append(len(sources))
        return original(sources, geometry)

    monkeypatch.setattr(stream_module, "decode_chunk", counting)
    return calls


def test_batches_labels_and_skips(with_truncated, tmp_path, caplog):
    dataset = load_dataset(str(with_truncated))
    with caplog.at_level(logging.WARNING, logger="vitqbench.data"):
        batches, indices, images = _collect(dataset, tmp_path / "cache", batch_size=4)
    assert [len(b.indices) for b in batches] == [4, 2]  # batches refill around the skipped image
    assert indices.tolist() == [0, 1, 3, 4, 5, 6]
    assert images.dtype == np.float32 and images.shape == (6, 3, 32, 32)
    for b in batches:
        assert b.labels.tolist() == dataset.labels[b.indices].tolist()
    assert len(dataset.skipped) == 1
    path, reason = dataset.skipped[0]
    assert path.endswith("a/002.jpg") and "truncated" in reason
    assert dataset.skipped_indices == [2] and dataset.kept_indices().tolist() == [0, 1, 3, 4, 5, 6]
    assert "skipping unreadable image" in caplog.text and "a/002.jpg" in caplog.text


def test_cache_hit_restores_skips_and_pixels(with_truncated, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _, first_idx, first = _collect(load_dataset(str(with_truncated)), cache, batch_size=3)
    calls = _count_decodes(monkeypatch)
    again = load_dataset(str(with_truncated))
    _, idx, images = _collect(again, cache, batch_size=3)
    assert calls == []  # served from the cache
    assert np.array_equal(idx, first_idx) and np.array_equal(images, first)
    assert [p for p, _ in again.skipped] == [again.paths[2]]  # the skip list comes back with the cache
    assert sorted(p.suffix for p in (cache / "decoded").iterdir()) == [".json", ".npy"]


def test_cache_invalidated_by_changed_file(with_truncated, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _, _, before = _collect(load_dataset(str(with_truncated)), cache)
    target = with_truncated / "a" / "000.png"
    write_image(target, "png", seed=123, size=(40, 33))
    os.utime(target, ns=(1, 1))  # even a file whose mtime went backwards must not be served stale
    calls = _count_decodes(monkeypatch)
    _, _, after = _collect(load_dataset(str(with_truncated)), cache)
    assert sum(calls) == 7
    assert not np.array_equal(after[0], before[0]) and np.array_equal(after[1:], before[1:])
    assert len(list((cache / "decoded").glob("*.npy"))) == 2


def test_cache_keyed_by_geometry(tmp_path, monkeypatch):
    dataset = load_dataset("digits:n=20")
    _collect(dataset, tmp_path)
    calls = _count_decodes(monkeypatch)
    other = type(TINY)(input_size=(3, 24, 24), mean=TINY.mean, std=TINY.std, crop_pct=TINY.crop_pct)
    list(iter_batches(dataset, other, cache_dir=tmp_path, progress=False))
    assert sum(calls) == 20
    # mean/std are applied on the fly: a new normalization reuses the cached pixels
    calls.clear()
    renormed = type(TINY)(input_size=(3, 32, 32), mean=(0.1,) * 3, std=(0.3,) * 3, crop_pct=TINY.crop_pct)
    list(iter_batches(dataset, renormed, cache_dir=tmp_path, progress=False))
    assert calls == []


def test_interrupted_pass_leaves_no_cache(tmp_path):
    dataset = load_dataset("digits:n=40")
    batches = iter_batches(dataset, TINY, batch_size=8, cache_dir=tmp_path, progress=False)
    next(batches)
    batches.close()  # the consumer stops early (Ctrl-C, an error downstream...)
    assert list((tmp_path / "decoded").iterdir()) == []
    _, indices, _ = _collect(dataset, tmp_path)
    assert len(indices) == 40 and len(list((tmp_path / "decoded").iterdir())) == 2


def test_strict_makes_unreadable_fatal(with_truncated, tmp_path):
    with pytest.raises(VitqbenchError, match=r"cannot read image .*a/002.jpg"):
        _collect(load_dataset(str(with_truncated), strict=True), tmp_path / "cache")
    _collect(load_dataset(str(with_truncated)), tmp_path / "cache")
    with pytest.raises(VitqbenchError, match="cannot read image"):  # also when the cache knows the skip
        _collect(load_dataset(str(with_truncated), strict=True), tmp_path / "cache")


def test_indices_and_uncached_mode(tmp_path, monkeypatch):
    dataset = load_dataset("digits:n=30")
    _, all_idx, all_images = _collect(dataset, tmp_path / "unused", cache=False)
    assert not (tmp_path / "unused").exists()
    _, idx, images = _collect(dataset, tmp_path, indices=[7, 3, 29], batch_size=2)
    assert idx.tolist() == [7, 3, 29]
    assert np.array_equal(images, all_images[[7, 3, 29]])
    assert len(list((tmp_path / "decoded").glob("*.npy"))) == 1  # the subset's own cache
    calls = _count_decodes(monkeypatch)
    _, again, _ = _collect(dataset, tmp_path, indices=[7, 3, 29])  # a calibration set iterated again
    assert calls == [] and again.tolist() == [7, 3, 29]
    _collect(dataset, tmp_path)  # the whole dataset is decoded (its subset cache does not cover it)...
    assert sum(calls) == 30
    _, again, _ = _collect(dataset, tmp_path, indices=[1, 2])  # ...and then serves any subset
    assert sum(calls) == 30 and again.tolist() == [1, 2]
    assert list(iter_batches(dataset, TINY, cache_dir=tmp_path, progress=False, indices=[])) == []
    with pytest.raises(VitqbenchError, match="out of range"):
        _collect(dataset, tmp_path, indices=[30])


def test_subset_skips_are_reported_in_dataset_indices(with_truncated, tmp_path):
    for _ in range(2):  # decoding, then from the subset's cache
        dataset = load_dataset(str(with_truncated))
        _, indices, _ = _collect(dataset, tmp_path, indices=[4, 2, 0])
        assert indices.tolist() == [4, 0] and dataset.skipped_indices == [2]


def test_worker_processes_match_in_process(tmp_path):
    dataset = load_dataset("digits:n=120")
    _, _, serial = _collect(dataset, None, cache=False, workers=1)
    _, indices, parallel = _collect(dataset, tmp_path, workers=2)
    assert indices.tolist() == list(range(120)) and np.array_equal(serial, parallel)


def test_decoded_images_is_the_cache(with_truncated, tmp_path):
    dataset = load_dataset(str(with_truncated))
    images = decoded_images(dataset, TINY, cache_dir=tmp_path, progress=False)
    assert isinstance(images, np.memmap) and images.shape == (7, 32, 32, 3) and images.dtype == np.uint8
    assert not images[2].any() and dataset.skipped_indices == [2]
    _, indices, normalized = _collect(load_dataset(str(with_truncated)), tmp_path)
    expected = (images[indices].astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(normalized, expected.transpose(0, 3, 1, 2), atol=1e-6)


def test_a_ctrl_c_while_decode_workers_start_waits_for_them_then_interrupts():
    """A worker still starting when the parent exits prints a FileNotFoundError traceback: Ctrl-C waits for all."""
    import signal
    import threading
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=2)
    threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT)).start()  # during start-up
    try:
        with pytest.raises(KeyboardInterrupt):  # the default handler's, raised after the wait
            stream_module._wait_started(pool, 2)
        assert len(pool._processes) == 2 and all(p.is_alive() for p in pool._processes.values())
    finally:
        pool.shutdown(wait=True)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
