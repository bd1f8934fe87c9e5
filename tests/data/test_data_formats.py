"""DATA specs: class folders, flat folders, OpenOOD image lists, options and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datahelpers import write_class_folders, write_image

from vitqbench.data import check_labels, load_dataset
from vitqbench.errors import VitqbenchError


@pytest.fixture
def class_root(tmp_path):
    root = tmp_path / "train"
    write_class_folders(root, {"b_dog": ["png", "jpeg"], "a_cat": ["gray", "rgba", "cmyk"], "c_owl": ["palette"]})
    (root / "a_cat" / "notes.txt").write_text("not an image")
    (root / "a_cat" / ".hidden.jpg").write_bytes(b"junk")
    (root / "d_empty").mkdir()
    write_image(root / "c_owl" / "nested" / "deep.jpg", "jpeg", seed=9)
    return root


def test_class_folders_sorted_by_name(class_root):
    dataset = load_dataset(str(class_root))
    assert dataset.class_names == ["a_cat", "b_dog", "c_owl", "d_empty"]  # empty class keeps its index
    assert dataset.labels.dtype == np.int64
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert [p.split("/train/")[1] for p in dataset.paths] == [
        "a_cat/000.jpg", "a_cat/001.png", "a_cat/002.jpg", "b_dog/000.png", "b_dog/001.jpg",
        "c_owl/000.png", "c_owl/nested/deep.jpg",
    ]  # fmt: skip
    assert not dataset.synthetic and dataset.skipped == []


def test_flat_folder_is_unlabeled(tmp_path):
    for i, kind in enumerate(["png", "jpeg", "gray"]):
        write_image(tmp_path / "ood" / f"{i}.{'png' if kind == 'png' else 'jpg'}", kind, seed=i)
    (tmp_path / "ood" / "README").write_text("ignored")
    dataset = load_dataset(str(tmp_path / "ood"))
    assert len(dataset) == 3 and dataset.labels is None and dataset.class_names is None


def test_image_list_relative_to_list_and_to_data_root(tmp_path, class_root):
    lines = ["a_cat/000.jpg 3", "b_dog/001.jpg 7", "", "c_owl/000.png 0"]
    listed = class_root / "val.txt"
    listed.write_text("\n".join(lines) + "\n")
    dataset = load_dataset(str(listed))
    assert dataset.labels.tolist() == [3, 7, 0]
    assert dataset.paths[1] == str(class_root / "b_dog" / "001.jpg")
    elsewhere = tmp_path / "lists" / "val.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_text("\n".join(lines))
    with pytest.raises(VitqbenchError, match="3 of 3 files missing.*--data-root"):
        load_dataset(str(elsewhere))
    assert load_dataset(str(elsewhere), data_root=class_root).key == dataset.key


def test_image_list_ood_labels_and_bad_lines(class_root):
    (class_root / "ood.txt").write_text("a_cat/000.jpg -1\nb_dog/000.png -1\n")
    assert load_dataset(str(class_root / "ood.txt")).labels is None
    (class_root / "mixed.txt").write_text("a_cat/000.jpg 1\nb_dog/000.png\n")
    with pytest.raises(VitqbenchError, match="mixes labelled and unlabelled"):
        load_dataset(str(class_root / "mixed.txt"))
    (class_root / "bad.txt").write_text("a_cat/000.jpg cat\n")
    with pytest.raises(VitqbenchError, match="bad.txt:1: label 'cat'"):
        load_dataset(str(class_root / "bad.txt"))
    (class_root / "empty.txt").write_text("\n")
    with pytest.raises(VitqbenchError, match="names no images"):
        load_dataset(str(class_root / "empty.txt"))


def test_options_on_folders(class_root):
    full = load_dataset(str(class_root))
    some = load_dataset(f"{class_root}:n=4:seed=3")
    assert len(some) == 4 and set(some.paths) < set(full.paths)
    assert some.paths == sorted(some.paths, key=full.paths.index)  # dataset order kept
    assert load_dataset(f"{class_root}:n=4:seed=3").paths == some.paths
    assert load_dataset(f"{class_root}:n=4:seed=4").paths != some.paths
    assert some.name == "train:n=4:seed=3" and some.spec == f"{class_root}:n=4:seed=3"
    dogs_owls = load_dataset(f"{class_root}:1-2")
    assert dogs_owls.labels.tolist() == [1, 1, 2, 2]  # original indices kept
    assert len({full.key, some.key, dogs_owls.key}) == 3


@pytest.mark.parametrize(
    "suffix, message",
    [
        (":n=99", "asks for n=99 but has only 7"),
        (":n=0", "n must be positive"),
        (":train", "train/test applies to built-in sets only"),
        (":3", "no images of classes"),
        (":5-2", "is empty"),
        (":bogus", "no such file or directory"),
    ],
)
def test_bad_options(class_root, suffix, message):
    with pytest.raises(VitqbenchError, match=message):
        load_dataset(f"{class_root}{suffix}")


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(VitqbenchError, match="no such file or directory"):
        load_dataset(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("no images here")
    with pytest.raises(VitqbenchError, match="no images found"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(VitqbenchError, match="empty dataset name"):
        load_dataset("  ")
    with pytest.raises(VitqbenchError, match="is one image"):
        load_dataset(str(write_image(tmp_path / "one.png", "png")))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(VitqbenchError, match="cannot read image list"):
        load_dataset(str(tmp_path / "binary.txt"))


def test_check_labels(class_root):
    dataset = load_dataset(str(class_root))
    check_labels(dataset, 4)
    with pytest.raises(VitqbenchError, match=r"2 label\(s\) outside the model's 2 classes.*c_owl"):
        check_labels(dataset, 2)
    write_image(class_root.parent / "flat" / "x.png", "png")
    with pytest.raises(VitqbenchError, match="has no labels"):
        check_labels(load_dataset(str(class_root.parent / "flat")), 10)


def test_key_follows_content(class_root):
    before = load_dataset(str(class_root)).key
    assert load_dataset(str(class_root)).key == before
    write_image(class_root / "b_dog" / "000.png", "png", seed=42, size=(50, 50))
    assert load_dataset(str(class_root)).key != before


def test_class_folders_are_numbered_in_timms_natural_order(tmp_path):
    from timm.utils.misc import natural_key

    names = ["0", "1", "2", "10", "11", "Zebra", "apple"]
    write_class_folders(tmp_path / "classes", {name: ["png"] for name in names})
    dataset = load_dataset(str(tmp_path / "classes"))
    assert dataset.class_names == sorted(names, key=natural_key) == ["0", "1", "2", "10", "11", "apple", "Zebra"]
    assert [Path(p).parent.name for p in dataset.paths] == dataset.class_names
    assert list(dataset.labels) == list(range(len(names)))
