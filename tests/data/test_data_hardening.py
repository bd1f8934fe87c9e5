"""Hostile data inputs: paths out of a list's root, symlink loops, contradictory options, huge noise sets."""

from __future__ import annotations

import os
import threading

import pytest
from datahelpers import write_image

from vitqbench.data import load_dataset
from vitqbench.errors import VitqbenchError


@pytest.fixture
def list_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_image(root / "in.png", "png")
    write_image(outside / "secret.png", "png")
    return root, outside


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_image_list_paths_outside_the_data_root_are_refused(list_root, tmp_path, how):
    root, outside = list_root
    line = {
        "dotdot": "../outside/secret.png 0",
        "absolute": f"{outside / 'secret.png'} 0",
        "symlink": "link.png 0",
    }[how]
    if how == "symlink":
        os.symlink(outside / "secret.png", root / "link.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"in.png 0\n{line}\n../../../../etc/passwd 1\n")
    with pytest.raises(VitqbenchError, match=r"2 of 3 paths resolve outside .*root \(first: line 2, ") as err:
        load_dataset(str(listing), data_root=root)
    assert "\n" not in str(err.value)
    (root / "sub").mkdir()
    listing.write_text("in.png 0\nsub/../in.png 1\n")  # ".." that stays inside is fine
    assert len(load_dataset(str(listing), data_root=root)) == 2


def _run_with_timeout(fn, seconds=20):
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(value=fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "the folder walk hung"
    return result["value"]


def test_symlink_loops_in_folders_end_and_count_each_image_once(tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        write_image(root / cls / f"{cls}.png", "png")
    os.symlink("..", root / "a" / "up")  # a link to the dataset itself
    os.symlink(root / "a", root / "a" / "self")  # a self-link
    os.symlink(root / "b", root / "a" / "to_b")  # a and b link to each other
    os.symlink(root / "a", root / "b" / "to_a")
    os.symlink(root / "a" / "a.png", root / "b" / "again.png")  # the same file twice
    dataset = _run_with_timeout(lambda: load_dataset(str(root)))
    assert sorted(os.path.basename(p) for p in dataset.paths) == ["a.png", "b.png"]
    assert dataset.class_names == ["a", "b"]
    assert list(dataset.labels) == [0, 1]


def test_linked_subfolders_that_form_no_loop_are_still_followed(tmp_path):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    write_image(elsewhere / "x.png", "png")
    write_image(root / "a" / "y.png", "png")
    os.symlink(elsewhere, root / "a" / "linked")
    assert sorted(os.path.basename(p) for p in load_dataset(str(root)).paths) == ["x.png", "y.png"]


@pytest.mark.parametrize("spec", ["digits:train:test", "digits:test:test", "digits:0-3:4-5", "digits:n=5:n=6"])
def test_an_option_given_twice_is_refused(spec):
    with pytest.raises(VitqbenchError, match="twice"):
        load_dataset(spec)


def test_noise_count_is_bounded():
    with pytest.raises(VitqbenchError, match="at most n=100000"):
        load_dataset("noise:gaussian:n=1000000000")
    assert len(load_dataset("noise:gaussian:n=3")) == 3
