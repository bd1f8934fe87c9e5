"""OOD detection: scores (a registry; higher = more in-distribution) and OpenOOD's metrics.

Pure numpy/scipy: arrays in, arrays out; nothing here runs a model.
"""

# isort: off
# Importing registers the scores; logit scores first so they lead default listings and tables.
from vitqbench.ood import logit_scores  # noqa: F401
from vitqbench.ood import feature_scores  # noqa: F401
from vitqbench.ood import head_scores  # noqa: F401
from vitqbench.ood import attention_scores  # noqa: F401

# isort: on
from vitqbench.ood.base import SCORES, Score, ScoreInputs, create_score, default_score_names, load_score
from vitqbench.ood.metrics import (
    FPR_CONVENTIONS,
    OOD_METRICS,
    MetricInfo,
    OODMetrics,
    RocCurve,
    expected_calibration_error,
    headline_fpr,
    mean_metrics,
    metric,
    metric_infos,
    ood_metrics,
    roc_curve,
    topk_accuracy,
)

__all__ = [
    "FPR_CONVENTIONS",
    "OOD_METRICS",
    "SCORES",
    "MetricInfo",
    "OODMetrics",
    "RocCurve",
    "Score",
    "ScoreInputs",
    "create_score",
    "default_score_names",
    "expected_calibration_error",
    "headline_fpr",
    "load_score",
    "mean_metrics",
    "metric",
    "metric_infos",
    "ood_metrics",
    "roc_curve",
    "topk_accuracy",
]
