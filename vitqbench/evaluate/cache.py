"""The eval cache: per-sample model outputs and fitted score state, keyed by content hashes.

Outputs of one (model file, dataset, execution target) cell are written in shards as inference goes,
each shard atomically, so an interrupted run resumes from the last finished shard; a finished
cell is merged into one file and its shards removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitqbench.errors import VitqbenchError
from vitqbench.files import UNREADABLE, atomic_path, default_cache_dir, file_lock, remove_stale_temps

# What each part keeps under the cache root.
CACHE_PARTS = {
    "decoded": "decoded images (per dataset and input geometry)",
    "outputs": "model outputs (per model file, dataset and provider)",
    "scores": "fitted OOD-score state",
    "demo": "the demo's trained checkpoints",
}


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """The cache root, created if needed; temporary files of killed runs in it are removed."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VitqbenchError(f"cannot create cache directory {root}: {exc.strerror}") from exc
    for folder in [root / part for part in CACHE_PARTS] + list((root / "outputs").glob("*.parts")):
        if folder.is_dir():
            remove_stale_temps(folder)
    if (root / "outputs").is_dir():  # lock files that older versions left behind
        remove_stale_temps(root / "outputs", pattern="*.lock")
    return root


@dataclass
class CachePart:
    name: str
    description: str
    files: int
    bytes: int
    oldest: float | None  # mtime: when an entry was last written or used


def cache_info(root: Path) -> list[CachePart]:
    """What the cache holds, per part."""
    parts = []
    for name, description in CACHE_PARTS.items():
        files = [f for f in _entries(root / name)]
        stats = [f.stat() for f in files]
        parts.append(
            CachePart(
                name,
                description,
                len(stats),
                sum(st.st_size for st in stats),
                min((st.st_mtime for st in stats), default=None),
            )
        )
    return parts


def clear_cache(root: Path, older_than_days: float | None = None) -> tuple[int, int]:
    """Remove cache entries (all, or those not written or used for ``older_than_days``): (files, bytes)."""
    if older_than_days is not None and not older_than_days >= 0:
        raise VitqbenchError(f"--older-than must be a number of days >= 0 (got {older_than_days})")
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    count = size = 0
    for name in CACHE_PARTS:
        for entry in _entries(root / name):
            st = entry.stat()
            if cutoff is None or st.st_mtime < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    count += 1
                    size += st.st_size
        for parts_dir in (root / name).glob("*.parts"):
            with contextlib.suppress(OSError):
                parts_dir.rmdir()  # only once empty
    if cutoff is None:
        for name in CACHE_PARTS:
            shutil.rmtree(root / name, ignore_errors=True)
    return count, size


def _entries(folder: Path) -> list[Path]:
    """The files of one cache part (shards of unfinished cells included), not the lock files."""
    if not folder.is_dir():
        return []
    return [f for f in folder.rglob("*") if f.is_file() and f.suffix != ".lock"]


def touch(path: Path) -> None:
    """Mark a cache entry as used now (``cache clear --older-than`` keeps what is in use)."""
    with contextlib.suppress(OSError):
        os.utime(path)


EXTRA = "extra__"  # npz name prefix of the extra outputs


@dataclass
class Outputs:
    """What one model produced on one dataset, in dataset order."""

    logits: np.ndarray  # [N, num_classes] float32
    features: np.ndarray  # [N, D] float32
    labels: np.ndarray | None  # [N] int64, None for an unlabelled set
    paths: np.ndarray  # [N] str
    indices: np.ndarray  # [N] int64, the dataset indices (all but the skipped ones once complete)
    skipped: dict[int, str] = field(default_factory=dict)  # unreadable images: index -> reason
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # further model outputs (attention), [N, ...]

    def __len__(self) -> int:
        return len(self.indices)

    def save(self, path: Path) -> None:
        arrays = {
            "logits": self.logits,
            "features": self.features,
            "paths": self.paths,
            "indices": self.indices,
            "skipped_indices": np.asarray(sorted(self.skipped), dtype=np.int64),
            "skipped_reasons": np.asarray([self.skipped[i] for i in sorted(self.skipped)], dtype=str),
        }
        if self.labels is not None:
            arrays["labels"] = self.labels
        arrays.update({EXTRA + name: value for name, value in self.extras.items()})
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: Path) -> Outputs:
        with np.load(path, allow_pickle=False) as z:
            skipped = {
                int(i): str(r) for i, r in zip(z["skipped_indices"], z["skipped_reasons"], strict=True)
            }
            return cls(
                logits=z["logits"],
                features=z["features"],
                labels=z["labels"] if "labels" in z.files else None,
                paths=z["paths"],
                indices=z["indices"],
                skipped=skipped,
                extras={name.removeprefix(EXTRA): z[name] for name in z.files if name.startswith(EXTRA)},
            )

    @classmethod
    def concat(cls, parts: list[Outputs]) -> Outputs:
        order = np.argsort(np.concatenate([p.indices for p in parts]), kind="stable")
        labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
        return cls(
            logits=np.concatenate([p.logits for p in parts])[order],
            features=np.concatenate([p.features for p in parts])[order],
            labels=None if labels is None else labels[order],
            paths=np.concatenate([p.paths for p in parts])[order],
            indices=np.concatenate([p.indices for p in parts])[order],
            extras={name: np.concatenate([p.extras[name] for p in parts])[order] for name in parts[0].extras},
        )


def outputs_key(model_sha256: str, dataset_key: str, target_tag: str) -> str:
    """A cell's key: the model file, the dataset's content and the execution target's tag."""
    return f"{model_sha256[:20]}__{dataset_key}__{target_tag}"


class OutputCache:
    """Finished cells as ``outputs/KEY.npz``; unfinished ones as ``outputs/KEY.parts/NNNNNN.npz``."""

    def __init__(self, root: Path):
        self.dir = root / "outputs"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def get(self, key: str) -> Outputs | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            out = Outputs.load(path)
        except UNREADABLE:  # a foreign, damaged or empty file is recomputed, never trusted
            path.unlink(missing_ok=True)
            return None
        touch(path)
        return out

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive use of one cell across processes (an advisory lock on ``KEY.lock``, removed after)."""
        with file_lock(self.dir / f"{key}.lock"):
            yield

    def parts_dir(self, key: str) -> Path:
        return self.dir / f"{key}.parts"

    def load_parts(self, key: str) -> list[Outputs]:
        parts_dir = self.parts_dir(key)
        parts = []
        for shard in sorted(parts_dir.glob("*.npz")) if parts_dir.is_dir() else []:
            try:
                parts.append(Outputs.load(shard))
            except UNREADABLE:
                shard.unlink(missing_ok=True)
        return parts

    def save_part(self, key: str, part: Outputs) -> None:
        parts_dir = self.parts_dir(key)
        parts_dir.mkdir(exist_ok=True)
        part.save(parts_dir / f"{int(part.indices[0]):09d}.npz")

    def finish(self, key: str, parts: list[Outputs], skipped: dict[int, str]) -> Outputs:
        """Merge the shards into the finished entry (a finished entry is complete by construction)."""
        if not parts:
            raise VitqbenchError("no image of the dataset could be read")
        out = Outputs.concat(parts)
        out.skipped = dict(skipped)
        out.save(self.path(key))
        parts_dir = self.parts_dir(key)
        if parts_dir.is_dir():
            for shard in parts_dir.glob("*.npz"):
                shard.unlink(missing_ok=True)
            parts_dir.rmdir()
        return out


def score_state_key(fit_outputs_key: str, score: str, version: int, params: dict[str, Any]) -> str:
    """Fitted state is a function of the fit set's outputs (model, data, provider), the score's
    version (each score bumps its own when its fitting changes) and every parameter, defaults included."""
    text = json.dumps(
        {"version": version, "fit": fit_outputs_key, "score": score, "params": params},
        sort_keys=True,
        default=str,
    )
    return f"{score}__{hashlib.sha256(text.encode()).hexdigest()[:24]}"


__all__ = [
    "CACHE_PARTS",
    "OutputCache",
    "cache_info",
    "clear_cache",
    "Outputs",
    "outputs_key",
    "resolve_cache_dir",
    "score_state_key",
]
