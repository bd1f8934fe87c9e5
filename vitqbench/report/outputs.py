"""``--save-outputs``: per-sample arrays of every cell, so any reported number can be recomputed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitqbench.evaluate.cache import OutputCache, Outputs
from vitqbench.evaluate.results import EvalResults
from vitqbench.files import atomic_path
from vitqbench.report.names import unique_slugs


def write_outputs(results: EvalResults, out_dir: Path) -> list[Path]:
    """``OUT/outputs/MODEL__DATASET.npz``: logits, features, labels, predictions, paths, score_<name>."""
    folder = out_dir / "outputs"
    folder.mkdir(parents=True, exist_ok=True)
    cache = OutputCache(Path(results.cache["dir"]))
    written = []
    # Two OOD names may slug alike ("a b", "a_b"): each cell still gets its own file.
    names = unique_slugs([f"{m}__{d}" for m, d in results.samples])
    for (model, dataset), samples in results.samples.items():
        key = results.cache["cells"].get(f"{model}__{dataset}")
        cached: Outputs | None = cache.get(key) if key else None
        if cached is None:
            continue
        arrays = {
            "logits": cached.logits,
            "features": cached.features,
            "labels": samples["labels"],
            "predictions": samples["predictions"],
            "paths": cached.paths,
        }
        arrays.update({f"score_{name}": v for name, v in samples.items() if name in results.score_names})
        path = folder / f"{names[f'{model}__{dataset}']}.npz"
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **arrays)
        written.append(path)
    return written
