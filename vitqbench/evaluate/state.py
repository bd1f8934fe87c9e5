"""Fitted OOD-score state, cached per (model hash, fit set key, score, parameters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.cache import Outputs, outputs_key, score_state_key
from vitqbench.evaluate.results import DatasetInfo, ModelInfo
from vitqbench.evaluate.scoring import ScoreSpec
from vitqbench.ood import load_score


def fitted_score(
    spec: ScoreSpec,
    model: ModelInfo,
    fit_info: DatasetInfo | None,
    fit_out: Outputs | None,
    cache_root: Path,
    provider: str,
) -> Any:
    """A ready score: as created when it needs no fit, else fitted on ``fit_out`` or loaded from cache."""
    score = spec.create()
    if not score.needs_fit:
        return score
    if fit_info is None or fit_out is None:
        raise VitqbenchError(f"{spec.label} needs fit-set outputs, which are missing (see the fit cell)")
    folder = cache_root / "scores"
    folder.mkdir(parents=True, exist_ok=True)
    fit_key = outputs_key(model.sha256, fit_info.key, provider)
    path = folder / f"{score_state_key(fit_key, spec.name, score.params())}.npz"
    if path.is_file():
        try:
            return load_score(path)
        except VitqbenchError:  # stale or damaged state is refitted, never trusted
            path.unlink(missing_ok=True)
            score = spec.create()
    head = _head(model) if getattr(score, "needs_head", False) else None
    score.fit(fit_out.features, fit_out.labels, logits=fit_out.logits, head=head)
    score.save(path)  # atomic: an interrupted fit leaves no state behind
    return score


def _head(model: ModelInfo) -> tuple[Any, Any]:
    from vitqbench.metadata import read_head

    return read_head(model.path)
