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

    tell = on_batch or (lambda n: None)
    with cache.lock(key):
        finished = cache.get(key)
        if finished is not None:
            tell(len(finished))
            return finished, 0
        shards = _Shards(cache, key, dataset)
        done = np.zeros(len(dataset), dtype=bool)
        for part in shards.parts:
            done[part.indices] = True
        if done.any():
            tell(int(done.sum()))  # resumed from the shards of an interrupted run
        todo = np.flatnonzero(~done)
        # Outputs beyond logits and features (export --attention) are kept too: they cost nothing to fetch.
        extra_names = [name for name in meta.outputs if name not in ("logits", "features")]
        fetch = [meta.outputs["logits"], meta.outputs["features"], *(meta.outputs[n] for n in extra_names)]
        computed = 0
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
                logits, features, *extras = session.run(
                    fetch, {meta.input_name: np.ascontiguousarray(batch.images, np.float32)}
                )
                idx = np.asarray(batch.indices, dtype=np.int64)
                shards.add(idx, logits, features, dict(zip(extra_names, extras, strict=True)))
                computed += len(idx)
                tell(len(idx))
            shards.flush()
        return cache.finish(key, shards.parts, dict(dataset.skipped_reasons)), computed


class _Shards:
    """A cell's outputs, saved to the cache every SHARD_SAMPLES samples, so a killed run resumes from there."""

    def __init__(self, cache: OutputCache, key: str, dataset: Any):
        self.cache, self.key = cache, key
        self.parts = cache.load_parts(key)
        self.paths = np.asarray([str(p) for p in dataset.paths])
        self.labels = None if dataset.labels is None else np.asarray(dataset.labels, dtype=np.int64)
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []

    def add(self, idx: np.ndarray, logits: np.ndarray, features: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        extras = {name: value.astype(np.float32) for name, value in extras.items()}
        self.pending.append((idx, logits.astype(np.float32), features.astype(np.float32), extras))
        if sum(len(p[0]) for p in self.pending) >= SHARD_SAMPLES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        idx = np.concatenate([p[0] for p in self.pending])
        part = Outputs(
            logits=np.concatenate([p[1] for p in self.pending]),
            features=np.concatenate([p[2] for p in self.pending]),
            labels=None if self.labels is None else self.labels[idx],
            paths=self.paths[idx],
            indices=idx,
            extras={name: np.concatenate([p[3][name] for p in self.pending]) for name in self.pending[0][3]},
        )
        self.cache.save_part(self.key, part)
        self.parts.append(part)
        self.pending.clear()
