"""OOD metrics: hand-checked cases, OpenOOD agreement (random and tied), the NaN path, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from vitqbench.errors import VitqbenchError
from vitqbench.ood import OOD_METRICS, mean_metrics, ood_metrics, roc_curve


def openood_metrics(id_scores, ood_scores):
    """OpenOOD's openood/evaluators/metrics.py restated: conf (higher = ID) and label (-1 = OOD)."""
    conf = np.concatenate([id_scores, ood_scores])
    label = np.r_[np.zeros(len(id_scores), int), -np.ones(len(ood_scores), int)]
    # auc_and_fpr_recall: OOD positive, conf negated (what compute_all_metrics reports)
    ood_indicator = np.zeros_like(label)
    ood_indicator[label == -1] = 1
    fpr_list, tpr_list, _ = skm.roc_curve(ood_indicator, -conf)
    fpr_ood_pos = fpr_list[np.argmax(tpr_list >= 0.95)]
    precision_in, recall_in, _ = skm.precision_recall_curve(1 - ood_indicator, conf)
    precision_out, recall_out, _ = skm.precision_recall_curve(ood_indicator, -conf)
    auroc = skm.auc(fpr_list, tpr_list)
    aupr_in = skm.auc(recall_in, precision_in)
    aupr_out = skm.auc(recall_out, precision_out)
    # fpr_recall: ID positive
    gt = np.ones_like(label)
    gt[label == -1] = 0
    fpr_list, tpr_list, _ = skm.roc_curve(gt, conf)
    fpr_id_pos = fpr_list[np.argmax(tpr_list >= 0.95)]
    return dict(
        auroc=auroc, aupr_in=aupr_in, aupr_out=aupr_out, fpr95_id_positive=fpr_id_pos, fpr95_ood_positive=fpr_ood_pos
    )


KEYS = ["auroc", "aupr_in", "aupr_out", "fpr95_id_positive", "fpr95_ood_positive"]


def assert_matches_openood(id_scores, ood_scores):
    ours = ood_metrics(id_scores, ood_scores).to_dict()
    ref = openood_metrics(id_scores, ood_scores)
    for key in KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key


@pytest.mark.parametrize("seed", range(8))
def test_random_scores_match_openood(seed):
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(1, 400, size=2)
    assert_matches_openood(rng.normal(0.7, 1, n_id), rng.normal(0, 1, n_ood))


@pytest.mark.parametrize("seed", range(12))
def test_tied_scores_match_openood(seed):
    """Few distinct values so most thresholds mix ID and OOD; exercises roc_curve's point pruning."""
    rng = np.random.default_rng(100 + seed)
    levels = rng.integers(2, 12)
    n_id, n_ood = rng.integers(1, 300, size=2)
    id_scores = rng.integers(0, levels, n_id).astype(np.float32)
    ood_scores = np.maximum(rng.integers(0, levels, n_ood) - rng.integers(0, 2, n_ood), 0).astype(np.float32)
    assert_matches_openood(id_scores, ood_scores)


def test_pruning_of_collinear_points_matches_openood():
    # Tie groups of (1 ID, 1 OOD) in a row make equal steps that roc_curve prunes; the first point
    # with TPR >= 95% then moves, and with it the FPR.
    id_scores = np.r_[np.full(18, 10.0), 5.0, 4.0, 3.0]
    ood_scores = np.array([5.0, 4.0, 3.0, 0.0])
    assert_matches_openood(id_scores, ood_scores)
    assert ood_metrics(id_scores, ood_scores).fpr95_id_positive == 0.75  # not 0.5: the 20/21 point is pruned


def test_perfect_and_reversed_separation():
    perfect = ood_metrics(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0]))
    assert (perfect.auroc, perfect.aupr_in, perfect.aupr_out, perfect.fpr95_id_positive) == (1.0, 1.0, 1.0, 0.0)
    assert perfect.fpr95_ood_positive == 0.0
    reversed_ = ood_metrics(np.array([0.0, 1.0]), np.array([3.0, 4.0, 5.0]))
    assert reversed_.auroc == 0.0
    assert reversed_.fpr95_id_positive == 1.0


def test_hand_computed_small_case():
    # ID 1 and 3, OOD 2 and 0: pairs (1>0, 3>2, 3>0) win, (1<2) loses -> AUROC 3/4.
    m = ood_metrics(np.array([1.0, 3.0]), np.array([2.0, 0.0]))
    assert m.auroc == 0.75
    # Keeping 95% of 2 ID needs both -> threshold 1 accepts OOD 2 only -> FPR 1/2.
    assert m.fpr95_id_positive == 0.5
    # PR-in points (recall, precision): (0,1) (.5,1) (.5,.5) (1,2/3) (1,.5); trapezoid = .5 + .5*(.5+2/3)/2
    assert m.aupr_in == pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3))


def test_all_tied_gives_chance_auroc():
    m = ood_metrics(np.ones(7), np.ones(5))
    assert m.auroc == 0.5
    assert m.fpr95_id_positive == 1.0  # ties at the threshold count as accepted


def test_auroc_agrees_with_sklearn_roc_auc_score():
    rng = np.random.default_rng(3)
    id_scores, ood_scores = rng.normal(0.3, 1, 500).round(1), rng.normal(0, 1, 700).round(1)
    y = np.r_[np.ones(500), np.zeros(700)]
    assert ood_metrics(id_scores, ood_scores).auroc == pytest.approx(
        skm.roc_auc_score(y, np.r_[id_scores, ood_scores]), abs=1e-12
    )


def test_invariant_to_monotone_transform_and_swap_is_complementary():
    rng = np.random.default_rng(4)
    id_scores, ood_scores = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    base = ood_metrics(id_scores, ood_scores)
    moved = ood_metrics(np.exp(id_scores) * 3 + 1, np.exp(ood_scores) * 3 + 1)
    for key in KEYS:
        assert getattr(moved, key) == pytest.approx(getattr(base, key), abs=1e-12)
    swapped = ood_metrics(-ood_scores, -id_scores)
    assert swapped.auroc == pytest.approx(base.auroc, abs=1e-12)
    assert swapped.aupr_in == pytest.approx(base.aupr_out, abs=1e-12)


def test_nonfinite_scores_rank_most_ood_counted_and_warned():
    id_scores = np.array([5.0, 6.0, np.nan, 7.0, np.inf])
    ood_scores = np.array([0.0, -np.inf, 1.0])
    with pytest.warns(RuntimeWarning, match="3 non-finite scores"):
        m = ood_metrics(id_scores, ood_scores)
    assert (m.n_nonfinite_id, m.n_nonfinite_ood, m.n_nonfinite) == (2, 1, 3)
    lowest = -1e9  # the same ranking written with finite stand-ins
    ref = openood_metrics(np.array([5.0, 6.0, lowest, 7.0, lowest]), np.array([0.0, lowest, 1.0]))
    for key in KEYS:
        assert getattr(m, key) == pytest.approx(ref[key], abs=1e-9)


def test_finite_scores_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ood_metrics(np.array([1.0, 2.0]), np.array([0.0])).n_nonfinite == 0


@pytest.mark.parametrize(
    ("id_scores", "ood_scores", "message"),
    [
        (np.array([]), np.array([1.0]), "ID scores are empty"),
        (np.array([1.0]), np.array([]), "OOD scores are empty"),
        (np.ones((2, 2)), np.array([1.0]), "1-D"),
        (np.array(["a"]), np.array([1.0]), "real numbers"),
    ],
)
def test_bad_input_is_one_clear_error(id_scores, ood_scores, message):
    with pytest.raises(VitqbenchError, match=message):
        ood_metrics(id_scores, ood_scores)


def test_roc_curve_matches_sklearn_id_positive():
    rng = np.random.default_rng(5)
    id_scores, ood_scores = rng.integers(0, 20, 150).astype(float), rng.integers(0, 15, 100).astype(float)
    curve = roc_curve(id_scores, ood_scores)
    fpr, tpr, thresholds = skm.roc_curve(np.r_[np.ones(150), np.zeros(100)], np.r_[id_scores, ood_scores])
    np.testing.assert_array_equal(curve.fpr, fpr)
    np.testing.assert_array_equal(curve.tpr, tpr)
    np.testing.assert_array_equal(curve.thresholds, thresholds)


def test_metric_titles_and_directions_live_on_the_one_type():
    infos = {m.name: m for m in OOD_METRICS}
    assert list(infos) == KEYS
    assert infos["fpr95_id_positive"].title == "FPR@95TPR (ID+)" and infos["fpr95_id_positive"].better == "lower"
    assert infos["fpr95_ood_positive"].title == "FPR@95 (OpenOOD v1.5, OOD+)"
    assert infos["auroc"].better == "higher"


def test_mean_metrics_average_each_metric_and_sum_ood_counts():
    rng = np.random.default_rng(3)
    id_scores = np.r_[rng.normal(1, 1, 50), np.nan]
    with pytest.warns(RuntimeWarning):
        rows = [ood_metrics(id_scores, np.r_[rng.normal(0, 1, n), [np.nan] * bad]) for n, bad in ((30, 0), (40, 2))]
    mean = mean_metrics(rows)
    for key in KEYS:
        assert getattr(mean, key) == pytest.approx((getattr(rows[0], key) + getattr(rows[1], key)) / 2)
    assert (mean.n_id, mean.n_ood, mean.n_nonfinite_id, mean.n_nonfinite_ood) == (51, 72, 1, 2)
    with pytest.raises(VitqbenchError, match="no metrics"):
        mean_metrics([])
