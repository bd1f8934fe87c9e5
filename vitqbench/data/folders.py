"""Datasets on disk: class folders (ImageFolder), flat folders, and OpenOOD image lists."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from vitqbench.data.dataset import Dataset
from vitqbench.errors import VitqbenchError

log = logging.getLogger("vitqbench.data")

# torchvision's ImageFolder extensions; anything else in a folder is not an image and is ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".gif"}
)


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path, seen: set[tuple[int, int]]) -> list[Path]:
    """Images under ``folder``, depth first in sorted order, following symlinks.

    ``seen`` holds the (device, inode) of every folder and image already walked (``folder`` itself is
    walked even if listed): a link back up the tree, two folders linking to each other or a second
    link to the same image is visited once, so a symlink loop can neither hang the walk nor count an
    image twice.
    """
    found: list[Path] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            st = current.stat()
            if (st.st_dev, st.st_ino) in seen and current is not folder:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:  # unreadable or vanished folder: skipped, as os.walk does
            continue
        dirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if not entry.name.startswith("."):
                    dirs.append(Path(entry.path))
            elif is_image_file(entry.name):
                try:
                    target = os.stat(entry.path)
                except OSError:  # a broken link stays: decoding reports it as unreadable
                    found.append(Path(entry.path))
                    continue
                if (target.st_dev, target.st_ino) not in seen:
                    seen.add((target.st_dev, target.st_ino))
                    found.append(Path(entry.path))
        stack.extend(reversed(dirs))
    return found


def _file_id(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as exc:
        raise VitqbenchError(f"cannot read {path}: {exc.strerror}") from exc
    return f"{path}\0{st.st_size}\0{st.st_mtime_ns}"


def _from_files(spec: str, name: str, files: list[Path], labels, class_names) -> Dataset:
    # the key is the content (paths, sizes, mtimes, labels): the same files listed or foldered are one dataset
    return Dataset(
        name=name,
        spec=spec,
        sources=[str(f) for f in files],
        paths=[str(f) for f in files],
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        ids=[_file_id(f) for f in files],
        origin="files",
    )


def natural_key(name: str) -> list[int | str]:
    """timm's class-folder sort key (``timm.utils.misc.natural_key``), without importing torch."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def load_folder(folder: Path, spec: str) -> Dataset:
    """Class sub-folders (label index in timm's order) or a flat folder.

    timm numbers classes in natural order (``2`` before ``10``, case ignored); torchvision's plain
    sort differs only for such names (never for ImageNet's synset folders). Every non-hidden
    sub-folder is a class, even an empty one (timm skips those), so that the indices of the others
    do not shift; images are found recursively inside each class folder. A folder with no
    image-holding sub-folder is flat and unlabeled.
    """
    folder = folder.resolve()
    subdirs = sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name)
    )
    # the dataset and its class folders count as walked: a link into another class is not followed
    seen = {(st.st_dev, st.st_ino) for st in (p.stat() for p in [folder, *subdirs])}
    per_class = [_images_under(d, seen) for d in subdirs]
    top_level = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name))
    if any(per_class):
        if top_level:
            log.warning(
                "warning: %s has class sub-folders; ignoring %d image(s) directly inside it",
                folder,
                len(top_level),
            )
        files = [f for images in per_class for f in images]
        labels = [label for label, images in enumerate(per_class) for _ in images]
        class_names = [d.name for d in subdirs]
        return _from_files(spec, folder.name, files, labels, class_names)
    if not top_level:
        raise VitqbenchError(f"no images found in {folder}")
    return _from_files(spec, folder.name, top_level, None, None)


def load_image_list(list_file: Path, spec: str, data_root: Path | None) -> Dataset:
    """OpenOOD's image lists: ``relative/path label`` per line (split at the first space, as OpenOOD does).

    Paths are relative to ``data_root`` (OpenOOD's ``data_dir``) or else to the list's folder. A
    missing label or -1 (OpenOOD's OOD lists) means unlabeled; a list mixing both is an error.
    """
    root = (data_root or list_file.parent).resolve()
    if data_root is not None and not root.is_dir():
        raise VitqbenchError(f"--data-root {data_root} is not a directory")
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VitqbenchError(f"cannot read image list {list_file}: {exc}") from exc
    files: list[Path] = []
    numbers: list[int] = []
    labels: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, extra = line.strip().partition(" ")
        extra = extra.strip()
        try:
            labels.append(int(extra) if extra else -1)
        except ValueError:
            raise VitqbenchError(f"{list_file}:{number}: label {extra!r} is not an integer") from None
        files.append(root / name)
        numbers.append(number)
    if not files:
        raise VitqbenchError(f"image list {list_file} names no images")
    # OpenOOD's lists are relative to their data root: "..", an absolute path or a link out is refused
    inside = [Path(os.path.realpath(f)).is_relative_to(root) for f in files]
    outside = [(n, f) for n, f, ok in zip(numbers, files, inside, strict=True) if not ok]
    if outside:
        number, first = outside[0]
        raise VitqbenchError(
            f"image list {list_file}: {len(outside)} of {len(files)} paths resolve outside {root} "
            f"(first: line {number}, {first.relative_to(root) if first.is_relative_to(root) else first})"
        )
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise VitqbenchError(
            f"image list {list_file}: {len(missing)} of {len(files)} files missing under {root} "
            f"(first: {missing[0]}); use --data-root to say where the list's paths start"
        )
    labelled = [x >= 0 for x in labels]
    if any(labelled) and not all(labelled):
        raise VitqbenchError(f"image list {list_file} mixes labelled and unlabelled (-1 or none) lines")
    return _from_files(spec, list_file.stem, files, labels if all(labelled) else None, None)
