"""``--save-outputs``: per-sample arrays of every cell, so any reported number can be recomputed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitqbench.files import atomic_path
from vitqbench.metadata import ATTN_CLS, ATTN_ENTROPY, ATTN_ROLLOUT
from vitqbench.report.names import unique_slugs
from vitqbench.results import OUTPUT_PREFIX, EvalResults

ARRAYS = ("logits", "features", "labels", "predictions", "paths")
ATTENTION = (ATTN_CLS, ATTN_ENTROPY, ATTN_ROLLOUT)  # models from export --attention (the rollout over all tokens)


def write_outputs(results: EvalResults, out_dir: Path) -> list[Path]:
    """``OUT/outputs/MODEL__DATASET.npz``: logits, features, labels, predictions, paths, score_<name>,
    and attn_cls, attn_entropy, attn_rollout for a model exported with ``--attention``.

    The arrays come from the results themselves (a run keeps logits and features when asked to);
    a cell whose results hold no logits has no file.
    """
    folder = out_dir / "outputs"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    # Two OOD names may slug alike ("a b", "a_b"): each cell still gets its own file.
    names = unique_slugs([f"{m}__{d}" for m, d in results.samples])
    for (model, dataset), samples in results.samples.items():
        if "logits" not in samples:
            continue
        arrays = {name: samples[name] for name in ARRAYS}
        arrays.update({name: samples[OUTPUT_PREFIX + name] for name in ATTENTION if OUTPUT_PREFIX + name in samples})
        arrays.update({f"score_{name}": v for name, v in samples.items() if name in results.score_names})
        path = folder / f"{names[f'{model}__{dataset}']}.npz"
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **arrays)
        written.append(path)
    return written
