"""Fitted OOD-score state, cached per (model hash, fit set key, score, its version, parameters),
and the input bundle each score reads."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.cache import Outputs, outputs_key, score_state_key
from vitqbench.evaluate.scoring import ScoreSpec
from vitqbench.ood import load_score
from vitqbench.results import DatasetInfo, ModelInfo


def fitted_score(
    spec: ScoreSpec,
    model: ModelInfo,
    fit_info: DatasetInfo | None,
    fit_out: Outputs | None,
    cache_root: Path,
    target_tag: str,
) -> Any:
    """A ready score: as created when it needs no fit, else fitted on ``fit_out`` or loaded from cache."""
    score = spec.create()
    if not score.needs_fit:
        return score
    if fit_info is None or fit_out is None:
        raise VitqbenchError(f"{spec.label} needs fit-set outputs, which are missing (see the fit cell)")
    folder = cache_root / "scores"
    folder.mkdir(parents=True, exist_ok=True)
    fit_key = outputs_key(model.sha256, fit_info.key, target_tag)
    path = folder / f"{score_state_key(fit_key, spec.name, score.version, score.params())}.npz"
    if path.is_file():
        try:
            return load_score(path)
        except VitqbenchError:  # stale or damaged state is refitted, never trusted
            path.unlink(missing_ok=True)
            score = spec.create()
    score.fit(score_inputs(score, model, fit_out))
    score.save(path)  # atomic: an interrupted fit leaves no state behind
    return score


def score_inputs(score: Any, model: ModelInfo, out: Outputs) -> Any:
    """The bundle ``score`` reads from one cell's outputs; the model's head only if it reads one, and
    the attention outputs of an ``export --attention`` model (the rollout over its patch tokens)."""
    from vitqbench.evaluate.attention import patch_rollout
    from vitqbench.metadata import ATTN_ENTROPY
    from vitqbench.ood import ScoreInputs

    head = _head(model.path, model.sha256) if score.needs_head else None
    return ScoreInputs(
        logits=out.logits,
        features=out.features,
        labels=out.labels,
        head=head,
        attn_entropy=out.extras.get(ATTN_ENTROPY),
        attn_rollout=patch_rollout(out, model),
    )


@functools.lru_cache(maxsize=4)
def _head(path: str, sha256: str) -> tuple[Any, Any]:
    """The model's classifier head, read once per model file (``sha256`` keys the content)."""
    from vitqbench.metadata import read_head

    return read_head(path)
