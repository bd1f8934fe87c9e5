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
    decode_cache: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[Outputs, int]:
    """Outputs of ``session`` on every readable sample of ``dataset``, and how many were run now.

    Only the samples no cached shard holds are run; ``on_batch`` is told how many samples each
    step covered (the resumed ones first, in one step). Two runs that share the cache compute a
    cell one after the other: the second finds it finished.
    """
    from vitqbench.data import iter_batches

    with cache.lock(key):
        finished = cache.get(key)
        if finished is not None:
            if on_batch is not None:
                on_batch(len(finished))
            return finished, 0
        parts = cache.load_parts(key)
        done = np.zeros(len(dataset), dtype=bool)
        for part in parts:
            done[part.indices] = True
        if on_batch is not None and done.any():
            on_batch(int(done.sum()))  # resumed from the shards of an interrupted run
        todo = np.flatnonzero(~done)
        paths = np.asarray([str(p) for p in dataset.paths])
        labels = None if dataset.labels is None else np.asarray(dataset.labels, dtype=np.int64)
        fetch = [meta.outputs["logits"], meta.outputs["features"]]
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        computed = 0

        def flush() -> None:
            if not pending:
                return
            idx = np.concatenate([p[0] for p in pending])
            part = Outputs(
                logits=np.concatenate([p[1] for p in pending]),
                features=np.concatenate([p[2] for p in pending]),
                labels=None if labels is None else labels[idx],
                paths=paths[idx],
                indices=idx,
            )
            cache.save_part(key, part)
            parts.append(part)
            pending.clear()

        if len(todo):
            # A full pass (indices=None) is what lets the data part fill its decode cache for the next model.
            batches = iter_batches(
                dataset,
                meta.data_config,
                batch_size=batch_size,
                cache_dir=image_cache_dir,
                progress=False,
                indices=None if len(todo) == len(dataset) else todo,
                cache=decode_cache,
            )
            for batch in batches:
                images = np.ascontiguousarray(batch.images, dtype=np.float32)
                logits, features = session.run(fetch, {meta.input_name: images})
                idx = np.asarray(batch.indices, dtype=np.int64)
                pending.append((idx, logits.astype(np.float32), features.astype(np.float32)))
                computed += len(idx)
                if on_batch is not None:
                    on_batch(len(idx))
                if sum(len(p[0]) for p in pending) >= SHARD_SAMPLES:
                    flush()
            flush()
        return cache.finish(key, parts, dict(dataset.skipped_reasons)), computed
