"""Top-k accuracy and expected calibration error."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from vitqbench.errors import VitqbenchError
from vitqbench.ood import expected_calibration_error, topk_accuracy


def test_topk_hand_checked():
    logits = np.array([[0.1, 0.5, 0.4], [2.0, 1.0, 3.0], [0.0, 1.0, 2.0]])
    labels = np.array([1, 0, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 3) == 1.0


def test_topk_matches_sort_on_random_logits_and_small_chunks():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(300, 20)), rng.integers(0, 20, 300)
    for k in (1, 5):
        top = np.argsort(-logits, axis=1)[:, :k]
        expected = np.mean((top == labels[:, None]).any(1))
        assert topk_accuracy(logits, labels, k, chunk=7) == pytest.approx(expected)


def test_topk_ties_break_like_argmax_so_constant_logits_score_chance():
    labels = np.array([0, 1, 2, 3, 0, 1])
    assert topk_accuracy(np.zeros((6, 4)), labels, 1) == pytest.approx(2 / 6)
    assert topk_accuracy(np.zeros((6, 4)), labels, 2) == pytest.approx(4 / 6)


def test_topk_nan_rows_are_wrong():
    logits = np.array([[np.nan, 0.0], [1.0, 0.0]])
    assert topk_accuracy(logits, np.array([1, 0]), 1) == 0.5


@pytest.mark.parametrize(
    ("logits", "labels", "k", "message"),
    [
        (np.zeros((0, 3)), np.zeros(0, int), 1, "non-empty"),
        (np.zeros((2, 3)), np.zeros(3, int), 1, "labels must have shape"),
        (np.zeros((2, 3)), np.array([0, 3]), 1, r"lie in \[0, 2\]"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), 1, "integers"),
        (np.zeros((2, 3)), np.array([0, 1]), 4, "k <= 3"),
    ],
)
def test_classification_bad_input(logits, labels, k, message):
    with pytest.raises(VitqbenchError, match=message):
        topk_accuracy(logits, labels, k)


def reference_ece(logits, labels, n_bins=15):
    """Guo et al.'s loop: bins (lo, hi], weight = fraction of samples in the bin."""
    probs = softmax(logits, axis=1)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(conf[inside].mean() - (pred[inside] == labels[inside]).mean())
    return ece


def test_ece_matches_reference_loop():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(scale=3, size=(2000, 10)), rng.integers(0, 10, 2000)
    expected = reference_ece(logits, labels)
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(logits, labels, chunk=7) == pytest.approx(expected, abs=1e-12)


def test_ece_hand_checked():
    # Two equal logits: confidence 0.5, prediction class 0 (first index).
    assert expected_calibration_error(np.zeros((2, 2)), np.array([0, 1])) == 0.0  # accuracy 0.5
    assert expected_calibration_error(np.zeros((2, 2)), np.array([0, 0])) == pytest.approx(0.5)  # accuracy 1


def test_ece_skips_nonfinite_rows_with_warning():
    logits = np.array([[np.nan, 0.0], [5.0, 0.0], [0.0, 5.0]])
    labels = np.array([0, 0, 1])
    with pytest.warns(RuntimeWarning, match="1 rows"):
        value = expected_calibration_error(logits, labels)
    assert value == pytest.approx(reference_ece(logits[1:], labels[1:]))
