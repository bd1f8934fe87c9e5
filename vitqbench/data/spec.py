"""DATA specs: ``SOURCE[:OPTION]...``, parsed into a ``Dataset``.

SOURCE is a folder, an image-list file, or a built-in name (``digits``, ``fashion-mnist``, ``photos``,
``noise:gaussian``, ``noise:uniform``). OPTIONs, in any order:

- ``train`` / ``test``: the split of a built-in set that has one (digits, fashion-mnist);
- ``0-5``, ``0,2,4``, ``1-3,7``: keep these classes; labels keep their original index;
- ``n=2000``: a random subset of that size, drawn with ``seed``, kept in dataset order;
  for ``noise:*`` it is the number of images to generate;
- ``seed=1``: the seed of ``n=`` (and of the noise); without it, the caller's seed (``--seed``, default 0).

Examples: ``digits:test:0-5``, ``fashion-mnist:train:n=2000``, ``~/imagenet/val:n=5000:seed=1``,
``noise:uniform:n=500``. Built-in names win over a folder of the same name (write ``./digits`` for
the folder); a path that exists as written is never parsed for options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitqbench.data import builtin
from vitqbench.data.dataset import Dataset
from vitqbench.data.folders import is_image_file, load_folder, load_image_list
from vitqbench.errors import VitqbenchError

BUILTINS = ("digits", "fashion-mnist", "photos", "noise")
BUILTIN_SPECS = "digits, fashion-mnist, photos, noise:gaussian, noise:uniform"
SPLITS = ("train", "test")
_CLASSES = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_NUMBER = re.compile(r"^(n|seed)=(\d+)$")


@dataclass
class Options:
    split: str | None = None
    classes: list[int] | None = None
    n: int | None = None
    seed: int = 0


def _parse_classes(text: str) -> list[int]:
    classes: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise VitqbenchError(f"class range {part!r} is empty (write low-high)")
        classes.update(range(first, last + 1))
    return sorted(classes)


def _is_option(text: str) -> bool:
    return text in SPLITS or bool(_CLASSES.match(text) or _NUMBER.match(text))


def parse_options(parts: list[str], spec: str, seed: int = 0) -> Options:
    opts = Options(seed=seed)
    given: dict[str, str] = {}
    for part in parts:
        kind = "split" if part in SPLITS else "classes" if _CLASSES.match(part) else part.split("=", 1)[0]
        if kind in given:  # "digits:train:test" would silently keep the last one
            raise VitqbenchError(f"dataset {spec!r} gives {kind} twice ({given[kind]!r} and {part!r})")
        given[kind] = part
        if part in SPLITS:
            opts.split = part
        elif _CLASSES.match(part):
            opts.classes = _parse_classes(part)
        elif match := _NUMBER.match(part):
            setattr(opts, match.group(1), int(match.group(2)))
        elif part.split("=", 1)[0] in ("n", "seed"):
            raise VitqbenchError(f"{part!r} in dataset {spec!r}: {part.split('=', 1)[0]} takes a whole number")
        else:
            raise VitqbenchError(
                f"unknown option {part!r} in dataset {spec!r} (expected train, test, classes like 0-5, "
                "n=COUNT or seed=SEED)"
            )
    if opts.n is not None and opts.n <= 0:
        raise VitqbenchError(f"n must be positive in dataset {spec!r}")
    return opts


def _split_path_spec(spec: str) -> tuple[Path, list[str]]:
    """``/data/val:n=100`` -> (Path('/data/val'), ['n=100']); options are peeled off from the right."""
    path = Path(spec).expanduser()
    if path.exists():
        return path, []
    parts = spec.split(":")
    options: list[str] = []
    while len(parts) > 1 and _is_option(parts[-1]):
        options.insert(0, parts.pop())
        candidate = Path(":".join(parts)).expanduser()
        if candidate.exists():
            return candidate, options
    raise VitqbenchError(f"no such file or directory: {spec} (built-in datasets: {BUILTIN_SPECS})")


def _load_builtin(name: str, parts: list[str], spec: str, seed: int) -> tuple[Dataset, Options]:
    if name == "noise":
        if not parts or parts[0] not in builtin.NOISE_KINDS:
            raise VitqbenchError(f"say which noise in {spec!r}: noise:gaussian or noise:uniform")
        opts = parse_options(parts[1:], spec, seed)
        if opts.split or opts.classes:
            raise VitqbenchError(f"noise sets have no splits or classes ({spec!r})")
        if opts.n is not None and opts.n > builtin.NOISE_MAX_N:
            raise VitqbenchError(f"{spec!r}: at most n={builtin.NOISE_MAX_N} noise images")
        dataset = builtin.noise(spec, parts[0], opts.n, opts.seed)
        opts.n = None  # consumed: it was the number of images generated
        return dataset, opts
    opts = parse_options(parts, spec, seed)
    if opts.split and name not in ("digits", "fashion-mnist"):
        raise VitqbenchError(f"{name} has no train/test split ({spec!r})")
    if name == "digits":
        return builtin.digits(spec, opts.split), opts
    if name == "fashion-mnist":
        return builtin.fashion_mnist(spec, opts.split), opts
    return builtin.photos(spec), opts


def _select(dataset: Dataset, opts: Options, spec: str) -> Dataset:
    indices = np.arange(len(dataset))
    if opts.classes is not None:
        if dataset.labels is None:
            raise VitqbenchError(f"dataset {spec!r} has no labels to select classes from")
        indices = indices[np.isin(dataset.labels, opts.classes)]
        if len(indices) == 0:
            raise VitqbenchError(f"dataset {spec!r} has no images of classes {opts.classes}")
    if opts.n is not None:
        if opts.n > len(indices):
            raise VitqbenchError(f"dataset {spec!r} asks for n={opts.n} but has only {len(indices)} images")
        rng = np.random.default_rng(opts.seed)
        indices = np.sort(rng.choice(indices, size=opts.n, replace=False))
    if len(indices) == len(dataset):
        return dataset
    return dataset.subset(indices, spec)


def load_dataset(spec: str, data_root: Path | None = None, strict: bool = False, seed: int = 0) -> Dataset:
    """Parse a DATA spec (see the module docstring) into a ``Dataset``; bad specs raise one clear line.

    ``data_root`` is where an image list's relative paths start (default: the list's folder).
    ``strict`` makes an unreadable image fatal when decoding instead of skipping it.
    ``seed`` draws ``n=`` subsets and noise when the spec names no ``seed=`` of its own.
    """
    spec = str(spec).strip()
    if not spec:
        raise VitqbenchError("empty dataset name")
    name, *parts = spec.split(":")
    if name in BUILTINS:
        dataset, opts = _load_builtin(name, parts, spec, seed)
    else:
        path, options = _split_path_spec(spec)
        opts = parse_options(options, spec, seed)
        if opts.split:
            raise VitqbenchError(f"train/test applies to built-in sets only ({spec!r})")
        if path.is_dir():
            dataset = load_folder(path, spec)
        elif is_image_file(path.name):
            raise VitqbenchError(f"{path} is one image; a dataset is a folder of images or an image list")
        else:
            dataset = load_image_list(path, spec, Path(data_root).expanduser() if data_root else None)
        dataset.name = ":".join([dataset.name, *options])  # short, for tables: folder or list name
    dataset = _select(dataset, opts, spec)
    if name in BUILTINS:
        dataset.name = spec
    dataset.strict = strict
    return dataset
