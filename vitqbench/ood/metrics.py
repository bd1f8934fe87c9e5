"""OOD and classification metrics, with OpenOOD's definitions (``openood/evaluators/metrics.py``).

Convention: higher score = more in-distribution (ID); ID samples are the positives unless a name
says otherwise. OpenOOD computes everything with scikit-learn's ``roc_curve`` /
``precision_recall_curve`` and trapezoidal ``auc``; we compute the same quantities from one sort
and cumulative counts (every metric of a pair of score sets costs one ``argsort``), and the tests
check agreement with a re-statement of OpenOOD's code on random and tied inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from vitqbench.errors import VitqbenchError

TPR_LEVEL = 0.95
ECE_BINS = 15


@dataclass(frozen=True)
class MetricInfo:
    """How tables name a metric and which way is better; declared on the field that holds it."""

    name: str
    title: str
    lower_is_better: bool = False

    @property
    def better(self) -> str:
        return "lower" if self.lower_is_better else "higher"


def metric(title: str, lower_is_better: bool = False) -> Any:
    """A dataclass field holding a reported metric, with its table title and direction."""
    return field(metadata={"metric": (title, lower_is_better)})


def metric_infos(cls: type) -> tuple[MetricInfo, ...]:
    """The metrics a dataclass declares with ``metric(...)``, in field order."""
    return tuple(MetricInfo(f.name, *f.metadata["metric"]) for f in fields(cls) if "metric" in f.metadata)


@dataclass(frozen=True, kw_only=True)
class OODMetrics:
    """Detection metrics for one (ID set, OOD set, score); rates in [0, 1]. The one OOD-metrics type:
    eval's rows extend it, tables and reports take titles and directions from ``OOD_METRICS``.

    ``fpr95_id_positive``: fraction of OOD samples accepted (score >= t) at the largest threshold t that keeps
    at least 95% of ID samples (ID positive; OpenOOD's ``fpr_recall``, the ODIN/Energy papers).
    ``fpr95_ood_positive``: fraction of ID samples rejected at the threshold catching 95% of OOD;
    what OpenOOD v1.5's ``compute_all_metrics`` and leaderboard report as FPR@95 (OOD positive).
    """

    auroc: float = metric("AUROC")
    aupr_in: float = metric("AUPR-in")
    aupr_out: float = metric("AUPR-out")
    fpr95_id_positive: float = metric("FPR@95TPR (ID+)", lower_is_better=True)
    fpr95_ood_positive: float = metric("FPR@95 (OpenOOD v1.5, OOD+)", lower_is_better=True)
    n_id: int
    n_ood: int
    n_nonfinite_id: int = 0
    n_nonfinite_ood: int = 0

    @property
    def n_nonfinite(self) -> int:
        return self.n_nonfinite_id + self.n_nonfinite_ood

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


OOD_METRICS = metric_infos(OODMetrics)
# Which FPR@95 leads tables (--fpr-convention); both are always computed and written. OpenOOD v1.5's
# evaluator and leaderboard report the OOD-positive one, so its published tables compare directly.
FPR_CONVENTIONS = {"openood": "fpr95_ood_positive", "id-positive": "fpr95_id_positive"}
DEFAULT_FPR_CONVENTION = "openood"


def headline_fpr(convention: str = DEFAULT_FPR_CONVENTION) -> str:
    """The metric name of the FPR@95 that ``convention`` puts in the headline."""
    if convention not in FPR_CONVENTIONS:
        raise VitqbenchError(f"--fpr-convention must be {' or '.join(FPR_CONVENTIONS)}, got {convention!r}")
    return FPR_CONVENTIONS[convention]


def mean_metrics(rows: list[OODMetrics]) -> OODMetrics:
    """Each metric averaged over OOD sets scored against the same ID scores (OOD counts summed)."""
    if not rows:
        raise VitqbenchError("no metrics to average")
    means = {m.name: float(np.mean([getattr(r, m.name) for r in rows])) for m in OOD_METRICS}
    return OODMetrics(
        **means,
        n_id=rows[0].n_id,
        n_ood=sum(r.n_ood for r in rows),
        n_nonfinite_id=rows[0].n_nonfinite_id,
        n_nonfinite_ood=sum(r.n_nonfinite_ood for r in rows),
    )


@dataclass(frozen=True)
class RocCurve:
    """ROC points with ID as positive: ``tpr`` = ID accepted, ``fpr`` = OOD accepted at ``thresholds``.

    Starts at (0, 0) with threshold +inf, like scikit-learn's ``roc_curve``.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class _Counts:
    """Cumulative counts at each distinct score, scores descending: ``tp[k]`` = #ID >= ``values[k]``."""

    values: np.ndarray
    tp: np.ndarray
    fp: np.ndarray

    def reversed(self) -> _Counts:
        """Counts with OOD positive and the score negated: ``tp[k]`` = #OOD <= ``values[k]``."""
        id_in_group = np.diff(self.tp, prepend=0)[::-1]
        ood_in_group = np.diff(self.fp, prepend=0)[::-1]
        return _Counts(-self.values[::-1], np.cumsum(ood_in_group), np.cumsum(id_in_group))


def _clean(name: str, scores: np.ndarray) -> tuple[np.ndarray, int]:
    """float64 copy with NaN/inf moved below every finite score (most-OOD, all tied)."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise VitqbenchError(f"{name} scores must be a 1-D array, got shape {scores.shape}")
    if scores.size == 0:
        raise VitqbenchError(f"{name} scores are empty")
    if not np.issubdtype(scores.dtype, np.number) or np.iscomplexobj(scores):
        raise VitqbenchError(f"{name} scores must be real numbers, got dtype {scores.dtype}")
    out = scores.astype(np.float64)  # exact for float32/float16 and order-preserving
    bad = ~np.isfinite(out)
    out[bad] = -np.inf
    return out, int(bad.sum())


def _counts(id_scores: np.ndarray, ood_scores: np.ndarray) -> _Counts:
    scores = np.concatenate([id_scores, ood_scores])
    is_id = np.zeros(scores.size, dtype=np.int64)
    is_id[: id_scores.size] = 1
    order = np.argsort(-scores, kind="stable")
    scores, is_id = scores[order], is_id[order]
    # `!=` rather than np.diff: -inf - -inf is NaN, yet the non-finite scores form one tie group.
    last_of_group = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    tp = np.cumsum(is_id)[last_of_group]
    return _Counts(scores[last_of_group], tp, last_of_group + 1 - tp)


def _drop_intermediate(c: _Counts) -> _Counts:
    """scikit-learn ``roc_curve``'s default pruning of points collinear with equal steps.

    It changes which point is "first with TPR >= 95%" when consecutive tie groups each mix ID and
    OOD samples in equal numbers, so matching OpenOOD's FPR@95 on tied scores needs it too.
    """
    if c.tp.size <= 2:
        return c
    keep = np.r_[True, (np.diff(c.fp, 2) != 0) | (np.diff(c.tp, 2) != 0), True]
    return _Counts(c.values[keep], c.tp[keep], c.fp[keep])


def _roc(c: _Counts) -> RocCurve:
    c = _drop_intermediate(c)
    tp, fp = np.r_[0, c.tp], np.r_[0, c.fp]
    # Same float expressions as scikit-learn, so `tpr >= 0.95` decides identically.
    return RocCurve(fp / fp[-1], tp / tp[-1], np.r_[np.inf, c.values])


def _fpr_at_tpr(c: _Counts, level: float = TPR_LEVEL) -> float:
    roc = _roc(c)
    return float(roc.fpr[np.argmax(roc.tpr >= level)])


def _auroc(c: _Counts) -> float:
    """Trapezoid under the ROC from exact integer counts (ties count one half)."""
    tp = np.r_[0, c.tp]
    area2 = np.sum(np.diff(np.r_[0, c.fp]) * (tp[1:] + tp[:-1]))
    return float(area2 / (2.0 * tp[-1] * c.fp[-1]))


def _aupr(c: _Counts) -> float:
    """Trapezoid under precision(recall), starting at (recall 0, precision 1) as scikit-learn does."""
    precision = np.r_[1.0, c.tp / (c.tp + c.fp)]
    recall = np.r_[0.0, c.tp / c.tp[-1]]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1])) / 2.0)


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> OODMetrics:
    """AUROC, AUPR-in, AUPR-out and FPR@95TPR of ID vs OOD scores (higher = more ID).

    NaN and +-inf scores (a broken quantized model) are ranked most-OOD, tied with each other; they
    are counted in the result and announced with a ``RuntimeWarning``, never dropped.
    """
    id_clean, bad_id = _clean("ID", id_scores)
    ood_clean, bad_ood = _clean("OOD", ood_scores)
    if bad_id or bad_ood:
        warnings.warn(
            f"{bad_id + bad_ood} non-finite scores ({bad_id} ID, {bad_ood} OOD) ranked as most-OOD",
            RuntimeWarning,
            stacklevel=2,
        )
    counts = _counts(id_clean, ood_clean)
    out = counts.reversed()
    return OODMetrics(
        auroc=_auroc(counts),
        aupr_in=_aupr(counts),
        aupr_out=_aupr(out),
        fpr95_id_positive=_fpr_at_tpr(counts),
        fpr95_ood_positive=_fpr_at_tpr(out),
        n_id=id_clean.size,
        n_ood=ood_clean.size,
        n_nonfinite_id=bad_id,
        n_nonfinite_ood=bad_ood,
    )


def roc_curve(id_scores: np.ndarray, ood_scores: np.ndarray) -> RocCurve:
    """The ROC curve behind ``ood_metrics`` (ID positive), e.g. for plots; non-finite scores as there."""
    return _roc(_counts(_clean("ID", id_scores)[0], _clean("OOD", ood_scores)[0]))


def _check_classification(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise VitqbenchError(f"logits must be a non-empty [N, classes] array, got shape {logits.shape}")
    if labels.shape != (logits.shape[0],):
        raise VitqbenchError(f"labels must have shape ({logits.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise VitqbenchError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise VitqbenchError(f"labels must lie in [0, {logits.shape[1] - 1}], got {labels.min()}..{labels.max()}")
    return logits, labels.astype(np.int64)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1, chunk: int = 4096) -> float:
    """Fraction of rows whose label is among the k largest logits.

    Ties rank the lower class index first, as ``np.argmax`` does, so a model whose logits collapse
    to a constant scores chance, not 100%. Rows with a NaN logit count as wrong.
    """
    logits, labels = _check_classification(logits, labels)
    if not 1 <= k <= logits.shape[1]:
        raise VitqbenchError(f"top-k needs 1 <= k <= {logits.shape[1]} classes, got k={k}")
    classes = np.arange(logits.shape[1])
    correct = 0
    for start in range(0, len(labels), chunk):
        x, y = logits[start : start + chunk], labels[start : start + chunk]
        own = x[np.arange(len(y)), y][:, None]
        rank = (x > own).sum(1) + ((x == own) & (classes < y[:, None])).sum(1)
        correct += int(np.sum((rank < k) & ~np.isnan(x).any(1)))
    return correct / len(labels)


def expected_calibration_error(
    logits: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS, chunk: int = 4096
) -> float:
    """ECE of the max-softmax confidence over ``n_bins`` equal-width bins (lo, hi] (Guo et al. 2017).

    Rows with non-finite logits have no meaningful confidence: they are left out with a warning.
    """
    logits, labels = _check_classification(logits, labels)
    confidence, correct = np.empty(len(labels)), np.empty(len(labels), dtype=bool)
    finite = np.empty(len(labels), dtype=bool)
    for start in range(0, len(labels), chunk):
        x = logits[start : start + chunk].astype(np.float64)
        top = x.max(1, keepdims=True)
        with np.errstate(invalid="ignore"):  # inf - inf in broken rows; they are dropped below
            confidence[start : start + chunk] = 1.0 / np.exp(x - top).sum(1)  # the largest softmax entry
        correct[start : start + chunk] = np.argmax(x, axis=1) == labels[start : start + chunk]
        finite[start : start + chunk] = np.isfinite(x).all(1)
    if not finite.all():
        warnings.warn(f"ECE ignores {int((~finite).sum())} rows with non-finite logits", RuntimeWarning, stacklevel=2)
        if not finite.any():
            return float("nan")
        confidence, correct = confidence[finite], correct[finite]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    gap = np.bincount(bins, weights=confidence - correct, minlength=n_bins)
    return float(np.abs(gap).sum() / len(confidence))
