"""Run one ONNX model over one dataset, in batches, resuming from cached shards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitqbench.evaluate.cache import OutputCache, Outputs
from vitqbench.metadata import ModelMetadata

SHARD_SAMPLES = 2048  # outputs are flushed to the cache this often, so Ctrl-C loses at most this much


def run_cell(
    session: Any,
    meta: ModelMetadata,
    dataset: Any,
    cache: OutputCache,
    key: str,
    *,
    batch_size: int,
    image_cache_dir: Path | None,
    on_batch: Callable[[int], None] | None = None,
) -> Outputs:
    """Outputs of ``session`` on every sample of ``dataset``; only samples no shard holds are run."""
    from vitqbench.data import iter_batches

    parts = cache.load_parts(key)
    done = np.zeros(len(dataset), dtype=bool)
    for part in parts:
        done[part.indices] = True
    if on_batch is not None and done.any():
        on_batch(int(done.sum()))
    todo = np.flatnonzero(~done)
    paths = np.asarray([str(p) for p in dataset.paths]) if dataset.paths is not None else None
    labels = None if dataset.labels is None else np.asarray(dataset.labels, dtype=np.int64)
    feeds_name = meta.input_name
    fetch = [meta.outputs["logits"], meta.outputs["features"]]

    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending_n = 0

    def flush() -> None:
        nonlocal pending, pending_n
        if not pending:
            return
        idx = np.concatenate([p[0] for p in pending])
        part = Outputs(
            logits=np.concatenate([p[1] for p in pending]),
            features=np.concatenate([p[2] for p in pending]),
            labels=None if labels is None else labels[idx],
            paths=_paths_for(paths, idx),
            indices=idx,
        )
        cache.save_part(key, part)
        parts.append(part)
        pending, pending_n = [], 0

    if len(todo):
        batches = iter_batches(
            dataset, meta.data_config, batch_size=batch_size, cache_dir=image_cache_dir, progress=False,
            indices=todo,
        )
        for batch in batches:
            logits, features = session.run(fetch, {feeds_name: np.ascontiguousarray(batch.images, np.float32)})
            pending.append((np.asarray(batch.indices, np.int64), logits.astype(np.float32), features.astype(np.float32)))
            pending_n += len(batch.indices)
            if on_batch is not None:
                on_batch(len(batch.indices))
            if pending_n >= SHARD_SAMPLES:
                flush()
        flush()
    return cache.finish(key, parts)


def _paths_for(paths: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    if paths is None:
        return np.asarray([f"#{i}" for i in idx])
    return paths[idx]
