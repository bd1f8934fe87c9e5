"""Class-conditional fits refuse fit sets too small to estimate them (one line, not a silent 50 % AUROC)."""

from __future__ import annotations

import numpy as np
import pytest

from vitqbench.errors import VitqbenchError
from vitqbench.ood.base import ScoreInputs, create_score


@pytest.mark.parametrize("name", ["mahalanobis", "rmds"])
@pytest.mark.parametrize(("samples", "classes"), [(1, 1), (3, 3)])
def test_class_shared_covariance_needs_more_samples_than_classes(name, samples, classes):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(samples, 8)).astype(np.float32)
    labels = np.arange(samples) % classes
    with pytest.raises(VitqbenchError, match=f"{samples} samples for {classes} classes"):
        create_score(name).fit(ScoreInputs(features=features, labels=labels))


def test_enough_samples_still_fit():
    rng = np.random.default_rng(0)
    score = create_score("mahalanobis").fit(ScoreInputs(features=rng.normal(size=(20, 8)), labels=np.arange(20) % 3))
    assert np.isfinite(score.score(ScoreInputs(features=rng.normal(size=(4, 8))))).all()
