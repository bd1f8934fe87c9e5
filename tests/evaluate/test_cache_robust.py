"""The cache heals and stays bounded: unreadable entries are misses, no stale locks or temp files,
a full disk is one line, `vitqbench cache info|clear`, and reuse after a lock wait counts as reuse."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate import EvalConfig, run_eval
from vitqbench.evaluate.cache import OutputCache, outputs_key
from vitqbench.files import remove_stale_temps

ID, OOD = "digits:test:n=40", {"noise": "noise:gaussian:n=20"}


def _run(model: Path, cache: Path, **kwargs):
    return run_eval(EvalConfig(models=[model], id=ID, ood=OOD, scores="msp", cache_dir=cache, progress=False, **kwargs))


@pytest.fixture
def warm(tiny_onnx, tmp_path):
    """A cache filled by one run: (model, cache root, first results)."""
    cache = tmp_path / "cache"
    first = _run(tiny_onnx, cache)
    assert first.cache["computed"] == 2 and not first.failures
    return tiny_onnx, cache, first


def _auroc(results) -> float:
    return next(m.auroc for m in results.ood_metrics if m.dataset == "noise")


def test_no_lock_files_stay_behind(warm):
    _, cache, _ = warm
    assert not list(cache.rglob("*.lock"))


@pytest.mark.parametrize("damage", [b"", b"not a zip"])
def test_unreadable_outputs_entry_is_recomputed(warm, damage):
    model, cache, first = warm
    entries = sorted((cache / "outputs").glob("*.npz"))
    assert len(entries) == 2
    for entry in entries:
        entry.write_bytes(damage)
    again = _run(model, cache)
    assert not again.failures and again.cache["computed"] == 2
    assert _auroc(again) == _auroc(first)


def test_zero_length_shard_is_recomputed(warm):
    model, cache, first = warm
    outputs = OutputCache(cache)
    id_key = next(d.key for d in first.datasets if d.role == "id")
    key = outputs_key(first.models[0].sha256, id_key, first.settings["target"]["tag"])
    outputs.path(key).unlink()  # unfinished cell: one good shard, one empty one
    outputs.parts_dir(key).mkdir()
    (outputs.parts_dir(key) / "000000000.npz").write_bytes(b"")
    again = _run(model, cache)
    assert not again.failures and again.cache["samples_computed"] == 40
    assert _auroc(again) == _auroc(first)


def test_zero_length_decoded_images_are_decoded_again(warm):
    model, cache, first = warm
    decoded = sorted((cache / "decoded").glob("*.npy"))
    assert decoded
    for entry in decoded:
        entry.write_bytes(b"")
    (cache / "outputs").rename(cache / "outputs-old")  # make the cells run, so they read the images
    again = _run(model, cache)
    assert not again.failures and _auroc(again) == _auroc(first)
    assert all(entry.stat().st_size > 0 for entry in decoded)


def test_reuse_after_waiting_on_a_lock_counts_as_reused(warm, monkeypatch):
    """The cell is missing when the run looks, and finished by another run once it holds the lock."""
    model, cache, _ = warm
    seen: set[str] = set()
    original = OutputCache.get

    def late(self, key):
        if key not in seen:  # the first look, before the lock: another run is still computing it
            seen.add(key)
            return None
        return original(self, key)

    monkeypatch.setattr(OutputCache, "get", late)
    again = _run(model, cache)
    assert (again.cache["hits"], again.cache["computed"], again.cache["samples_computed"]) == (2, 0, 0)


def test_stale_temp_files_are_removed_unless_new_or_locked(tmp_path):
    folder = tmp_path / "decoded"
    folder.mkdir()
    stale, locked, fresh = (folder / f".{name}.npy.abc123.npy" for name in ("stale", "locked", "fresh"))
    for path in (stale, locked, fresh):
        path.write_bytes(b"x" * 100)
    old = time.time() - 3600
    for path in (stale, locked):
        os.utime(path, (old, old))
    keep = (folder / "entry.npy", folder / "entry.json")
    for path in keep:
        path.write_bytes(b"x")
        os.utime(path, (old, old))
    with open(locked, "rb") as handle:  # a live writer in another run holds its temp file
        fcntl.flock(handle, fcntl.LOCK_EX)
        removed = remove_stale_temps(folder, before=time.time() - 60)
    assert removed == 1
    assert not stale.exists() and locked.exists() and fresh.exists() and all(p.exists() for p in keep)


def test_a_run_removes_what_a_killed_run_left(warm):
    model, cache, _ = warm
    leftovers = [cache / "decoded" / ".x.npy.k1ll3d.npy", cache / "outputs" / ".y.npz.k1ll3d.npz"]
    leftovers.append(cache / "outputs" / "old-version.lock")
    for path in leftovers:
        path.write_bytes(b"\0" * 1000)
        os.utime(path, (time.time() - 3600,) * 2)
    _run(model, cache)
    assert not any(p.exists() for p in leftovers)


def test_cache_info_and_clear(warm, run_cli):
    _, cache, _ = warm
    info = run_cli("cache", "info", "--cache-dir", cache)
    assert info.code == 0
    lines = {line.split()[0]: line for line in info.stdout.splitlines()}
    assert {"decoded", "outputs", "scores", "demo"} <= set(lines)
    assert " 2 files" in lines["outputs"] and str(cache) in info.stdout
    # --older-than keeps what was written or used recently
    kept = run_cli("cache", "clear", "--older-than", "1", "--cache-dir", cache)
    assert kept.code == 0 and kept.stdout.startswith("removed 0 file(s)")
    old = time.time() - 3 * 86400
    for entry in (cache / "outputs").glob("*.npz"):
        os.utime(entry, (old, old))
    partly = run_cli("cache", "clear", "--older-than", "2", "--cache-dir", cache)
    assert partly.stdout.startswith("removed 2 file(s)") and any((cache / "decoded").iterdir())
    everything = run_cli("cache", "clear", "--cache-dir", cache)
    assert everything.code == 0 and not any(cache.rglob("*.*"))
    bad = run_cli("cache", "clear", "--older-than", "-1", "--cache-dir", cache)
    assert bad.code == 2 and "--older-than" in bad.stderr


def test_no_decode_cache_writes_no_decoded_images(tiny_onnx, tmp_path):
    cache = tmp_path / "cache"
    results = _run(tiny_onnx, cache, decode_cache=False)
    decoded = cache / "decoded"
    assert not results.failures and (not decoded.exists() or not any(decoded.iterdir()))
    assert len(list((cache / "outputs").glob("*.npz"))) == 2


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (root only), unmounted after."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_full_disk_in_the_decode_cache_is_one_error_and_leaves_nothing(tiny_disk):
    from vitqbench.data import iter_batches, load_dataset
    from vitqbench.metadata import DataConfig

    config = DataConfig(input_size=(3, 224, 224), mean=(0.5,) * 3, std=(0.5,) * 3)
    dataset = load_dataset("noise:gaussian:n=40")  # 40 x 150 KB = 5.7 MiB > 2 MiB
    with pytest.raises(VitqbenchError, match=r"not enough space for the decode cache in .*: 5\.7 MiB needed"):
        list(iter_batches(dataset, config, cache_dir=tiny_disk, progress=False, workers=1))
    assert [p for p in tiny_disk.rglob("*") if p.is_file()] == []


def test_eval_with_its_cache_on_a_full_disk_stops_with_one_line(tiny_onnx, tiny_disk, tmp_path, run_cli):
    out = tmp_path / "out"
    args = ["eval", "-m", tiny_onnx, "--id", "noise:gaussian:n=2000", "--ood", "photos=photos", "--scores", "msp"]
    result = run_cli(*args, "-o", out, "--cache-dir", tiny_disk, "--no-progress")
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and "not enough space for the decode cache in" in result.stderr
    assert [p for p in tiny_disk.rglob("*") if p.is_file()] == [] and not out.exists()


def test_full_disk_writing_outputs_names_the_path(tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    from vitqbench.evaluate.cache import Outputs

    out = Outputs(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32), None, np.array(["a"]), np.array([0]))
    with pytest.raises(VitqbenchError, match="no space left on the device writing .*x.npz"):
        out.save(tmp_path / "x.npz")
    assert list(tmp_path.iterdir()) == []
