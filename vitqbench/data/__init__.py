"""Datasets and timm-exact preprocessing.

``load_dataset(spec)`` turns a DATA spec into a ``Dataset``; ``iter_batches(dataset, data_config)``
streams normalized float32 batches exactly as timm's eval transform would produce them, decoding in
parallel once and reusing the decode cache afterwards; ``decoded_images`` exposes that cache.

DATA spec: ``SOURCE[:OPTION]...``

- SOURCE: a folder with class sub-folders (labels = sorted folder names), a flat folder of images
  (unlabeled), an OpenOOD image list (``relative/path label`` lines, relative to ``data_root`` or the
  list's folder), or a built-in set: ``digits``, ``fashion-mnist``, ``photos``, ``noise:gaussian``,
  ``noise:uniform`` (see ``vitqbench.data.builtin``).
- OPTION: ``train`` | ``test`` (built-in splits), classes ``0-5`` / ``0,2,4`` (original labels kept),
  ``n=COUNT`` (seeded random subset, or the number of noise images), ``seed=SEED`` (default 0).

Examples: ``digits:test:0-5``, ``fashion-mnist:train:n=2000``, ``/data/imagenet/val:n=5000``.
"""

from vitqbench.data.dataset import Dataset, check_labels
from vitqbench.data.preprocess import Geometry, Normalization, normalize, prepare_image
from vitqbench.data.spec import load_dataset
from vitqbench.data.stream import Batch, decoded_images, iter_batches

__all__ = [
    "Batch",
    "Dataset",
    "Geometry",
    "check_labels",
    "decoded_images",
    "iter_batches",
    "load_dataset",
    "Normalization",
    "normalize",
    "prepare_image",
]
