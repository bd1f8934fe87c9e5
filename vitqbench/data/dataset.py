"""The ``Dataset`` every part receives: what to decode, labels, names, and what had to be skipped."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from vitqbench.errors import VitqbenchError

KEY_VERSION = "1"  # bump when the meaning of a key changes, so old caches are never reused


@dataclass
class Dataset:
    """A list of images with optional labels.

    ``sources[i]`` is what a decode worker reads for item ``i``: a file path, a uint8 array (built-in
    sets) or a noise recipe. ``paths[i]`` names the item in results (a file path or ``digits/00042``).
    ``ids`` and ``origin`` identify the content for ``key``: a file's id holds its path, size and mtime,
    so an edited dataset gets a new key and is never served from a stale cache.
    """

    name: str
    spec: str
    sources: Sequence[Any]
    paths: list[str]
    labels: np.ndarray | None
    class_names: list[str] | None
    ids: list[str]
    origin: str
    synthetic: bool = False
    strict: bool = False
    # index -> reason, for items found unreadable while decoding (or restored from the decode cache)
    skipped_reasons: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @cached_property
    def key(self) -> str:
        """A content hash: the same key means the same images with the same labels."""
        digest = hashlib.sha256(f"{KEY_VERSION}\0{self.origin}\0".encode())
        for item in self.ids:
            digest.update(item.encode())
            digest.update(b"\0")
        if self.labels is not None:
            digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()[:32]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every unreadable image met so far, in dataset order."""
        return [(self.paths[i], reason) for i, reason in sorted(self.skipped_reasons.items())]

    @property
    def skipped_indices(self) -> list[int]:
        return sorted(self.skipped_reasons)

    def kept_indices(self) -> np.ndarray:
        """Indices of the items not (yet) known to be unreadable."""
        keep = np.ones(len(self), dtype=bool)
        keep[self.skipped_indices] = False
        return np.flatnonzero(keep)

    def subset(self, indices: Sequence[int] | np.ndarray, spec: str | None = None) -> Dataset:
        """The items at ``indices`` (in that order), as a dataset of its own with its own key."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) == 0:
            raise VitqbenchError(f"dataset {spec or self.spec} is empty after selection")
        sources = self.sources
        sources = sources[idx] if isinstance(sources, np.ndarray) else [sources[i] for i in idx]
        return replace(
            self,
            spec=spec or self.spec,
            sources=sources,
            paths=[self.paths[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            ids=[self.ids[i] for i in idx],
            skipped_reasons={},
        )


def check_labels(dataset: Dataset, num_classes: int) -> None:
    """Raise one clear line when a label cannot index a model with ``num_classes`` outputs."""
    if dataset.labels is None:
        raise VitqbenchError(f"dataset {dataset.spec} has no labels")
    bad = np.flatnonzero((dataset.labels < 0) | (dataset.labels >= num_classes))
    if len(bad):
        first = int(bad[0])
        raise VitqbenchError(
            f"dataset {dataset.spec}: {len(bad)} label(s) outside the model's {num_classes} classes "
            f"(e.g. {dataset.paths[first]} has label {int(dataset.labels[first])})"
        )
