"""Hyperparameter search on validation splits, as OpenOOD's evaluator does it (``hyperparam_search``):
every point of a score's grid is fitted, scored on ID-val and OOD-val, and the point with the best
validation AUROC wins (the first one on a tie, in OpenOOD's order: the first parameter varies fastest).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vitqbench.errors import VitqbenchError
from vitqbench.ood.base import SCORES, Score, ScoreInputs, create_score
from vitqbench.ood.metrics import ood_metrics


@dataclass(frozen=True)
class GridPoint:
    params: dict[str, Any]
    val_auroc: float | None  # None: the point could not be evaluated (``error`` says why)
    error: str | None = None


@dataclass(frozen=True)
class Tuning:
    """The search of one score: its grid, every point's validation AUROC and the chosen values."""

    score: str
    grid: dict[str, list[Any]]
    points: list[GridPoint] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)

    @property
    def val_auroc(self) -> float:
        return max(p.val_auroc for p in self.points if p.val_auroc is not None)


def grid_points(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination, the first parameter varying fastest (OpenOOD's ``recursive_generator``)."""
    names = list(grid)
    return [dict(zip(names, reversed(values), strict=True)) for values in itertools.product(*reversed(grid.values()))]


def tune_score(
    name: str,
    val_id: ScoreInputs,
    val_ood: ScoreInputs,
    fit: ScoreInputs | None = None,
    grid: dict[str, Sequence[Any]] | None = None,
    fixed: dict[str, Any] | None = None,
) -> Tuning:
    """Search ``grid`` (default: the score's OpenOOD grid, minus the parameters in ``fixed``) by AUROC
    of ``val_id`` vs ``val_ood``; fitted scores fit on ``fit`` at every point."""
    if name not in SCORES:
        raise VitqbenchError(f"unknown score {name!r}")
    fixed = dict(fixed or {})
    grid = {k: list(v) for k, v in (SCORES[name].grid if grid is None else grid).items() if k not in fixed}
    if not grid or any(not values for values in grid.values()):
        raise VitqbenchError(f"score {name!r} has an empty tuning grid {grid}")
    points = []
    for params in grid_points(grid):
        try:
            score = create_score(name, **fixed, **params)
            auroc = _val_auroc(score, fit, val_id, val_ood)
        except VitqbenchError as exc:
            points.append(GridPoint(params, None, str(exc)))
            continue
        points.append(GridPoint(params, auroc))
    scored = [p for p in points if p.val_auroc is not None]
    if not scored:
        reasons = "; ".join(sorted({p.error for p in points if p.error}))
        raise VitqbenchError(f"no grid point of {name!r} could be evaluated: {reasons}")
    best = max(scored, key=lambda p: p.val_auroc)  # max keeps the first of equals
    return Tuning(name, grid, points, {**fixed, **best.params})


def _val_auroc(score: Score, fit: ScoreInputs | None, val_id: ScoreInputs, val_ood: ScoreInputs) -> float:
    if score.needs_fit:
        if fit is None:
            raise VitqbenchError(f"score {score.name!r} needs a fit set to be tuned")
        score.fit(fit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # non-finite validation scores: ranked most-OOD
        return ood_metrics(score.score(val_id), score.score(val_ood)).auroc
