"""Validation tuning on arrays: OpenOOD's grid order, the best-AUROC point, ties, bad grids."""

from __future__ import annotations

import numpy as np
import pytest

from vitqbench.errors import VitqbenchError
from vitqbench.ood import ScoreInputs, create_score, ood_metrics
from vitqbench.ood.tuning import grid_points, tune_score


def test_grid_points_vary_the_first_parameter_fastest_as_openood():
    assert grid_points({"gamma": [1, 2], "M": [10, 20, 30]}) == [
        {"gamma": 1, "M": 10},
        {"gamma": 2, "M": 10},
        {"gamma": 1, "M": 20},
        {"gamma": 2, "M": 20},
        {"gamma": 1, "M": 30},
        {"gamma": 2, "M": 30},
    ]


def test_tuning_picks_the_grid_point_with_the_best_validation_auroc():
    """Constructed so that only k=3 separates: ID queries sit next to tight triples of fit points,
    OOD queries next to pairs (their 2 nearest are as close as an ID query's, the 3rd is far)."""
    rng = np.random.default_rng(0)
    dim = 8
    id_centers, ood_centers = rng.normal(size=(20, dim)), rng.normal(size=(20, dim))
    fit = np.concatenate([np.repeat(id_centers, 3, 0), np.repeat(ood_centers, 2, 0)])
    fit = fit + 1e-3 * rng.normal(size=fit.shape)
    val_id = ScoreInputs(features=id_centers + 1e-4 * rng.normal(size=id_centers.shape))
    val_ood = ScoreInputs(features=ood_centers + 1e-4 * rng.normal(size=ood_centers.shape))
    tuning = tune_score("knn", val_id, val_ood, fit=ScoreInputs(features=fit), grid={"k": [1, 2, 3, 4]})
    aurocs = {p.params["k"]: p.val_auroc for p in tuning.points}
    for k in aurocs:  # each point's AUROC is the plain metric of that k
        knn = create_score("knn", k=k).fit(ScoreInputs(features=fit))
        assert aurocs[k] == ood_metrics(knn.score(val_id), knn.score(val_ood)).auroc
    assert aurocs[3] == 1.0 and max(aurocs[1], aurocs[2]) < 0.9
    assert tuning.chosen == {"k": 3} and tuning.val_auroc == 1.0 and tuning.grid == {"k": [1, 2, 3, 4]}


def test_a_tie_keeps_the_first_point_and_fixed_parameters_are_not_searched():
    logits = np.random.default_rng(1).normal(size=(40, 5))
    val_id, val_ood = ScoreInputs(logits=logits[:20] * 3), ScoreInputs(logits=logits[20:])
    tuning = tune_score("energy", val_id, val_ood, grid={"temperature": [1.0, 1.0]})
    assert tuning.chosen == {"temperature": 1.0} and len(tuning.points) == 2
    gen = tune_score("gen", val_id, val_ood, fixed={"M": 3})
    assert set(gen.grid) == {"gamma"} and gen.chosen["M"] == 3 and len(gen.points) == 7


def test_points_that_cannot_apply_are_recorded_and_bad_grids_are_one_line():
    rng = np.random.default_rng(2)
    feats, head = rng.normal(size=(60, 6)), (rng.normal(size=(3, 6)), rng.normal(size=3))
    fit = ScoreInputs(features=feats, head=head)
    val = ScoreInputs(features=rng.normal(size=(10, 6)))
    tuning = tune_score("vim", val, ScoreInputs(features=rng.normal(size=(10, 6)) * 3), fit=fit, grid={"dim": [3, 9]})
    assert tuning.chosen == {"dim": 3} and "vim dim must be in [1, 5]" in tuning.points[1].error
    with pytest.raises(VitqbenchError, match="empty tuning grid"):
        tune_score("knn", val, val, fit=fit, grid={"k": []})
    with pytest.raises(VitqbenchError, match="empty tuning grid"):
        tune_score("mahalanobis", val, val, fit=fit)  # OpenOOD does not tune it: no grid
    with pytest.raises(VitqbenchError, match="no grid point of 'vim'.*vim dim"):
        tune_score("vim", val, val, fit=fit, grid={"dim": [9]})
    with pytest.raises(VitqbenchError, match="needs a fit set"):
        tune_score("knn", val, val, grid={"k": [1]})
