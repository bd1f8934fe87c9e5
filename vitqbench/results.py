"""The results of an eval run as plain dataclasses: what results.json, results.csv and report.md show.

Per-sample arrays (scores, labels, predictions, paths; logits and features when the run keeps them
for ``--save-outputs``) ride along in ``EvalResults.samples`` for plots and saved outputs; they are
never written into results.json. The report reads these objects only, never the eval cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitqbench.errors import VitqbenchError, first_line
from vitqbench.ood.metrics import (
    DEFAULT_FPR_CONVENTION,
    OOD_METRICS,
    MetricInfo,
    OODMetrics,
    headline_fpr,
    metric,
    metric_infos,
)

MEAN = "mean"  # the pseudo OOD set holding averages over the real (non-synthetic) OOD sets
VAL_ID, VAL_OOD = "val-id", "val-ood"  # the validation sets --tune searches score grids on
# OpenOOD v1.5 reports near-OOD and far-OOD separately; synthetic sets (noise) are a sanity check,
# averaged on their own and never part of a headline mean.
NEAR, FAR, SYNTHETIC = "near", "far", "synthetic"
OOD_GROUPS = (NEAR, FAR, SYNTHETIC)
# The columns of the latency table (records of vitqbench.bench, one per model and batch size).
BENCH_COLUMNS = (
    "model",
    "precision",
    "batch",
    "threads",
    "p50_ms",
    "mean_ms",
    "throughput_ips",
    "speedup",
    "peak_rss_mb",
    "model_mb",
    "status",
)


def group_mean(group: str) -> str:
    """The pseudo OOD set holding one group's average (``mean:near``); set names never hold ':'."""
    return f"{MEAN}:{group}"


def mean_title(mean: str) -> str:
    """How tables and plots name a mean: ``mean:near`` -> ``near-OOD``, ``mean`` -> ``all real OOD``."""
    group = mean.partition(":")[2]
    return {"": "all real OOD", SYNTHETIC: "synthetic"}.get(group, f"{group}-OOD")


def mean_members(datasets: list[DatasetInfo]) -> dict[str, list[str]]:
    """Each mean pseudo set -> the OOD sets it averages (only means with at least one set)."""
    ood = [d for d in datasets if d.role == "ood"]
    out = {MEAN: [d.name for d in ood if d.group != SYNTHETIC]}
    out.update({group_mean(g): [d.name for d in ood if d.group == g] for g in OOD_GROUPS})
    return {name: members for name, members in out.items() if members}


@dataclass
class ModelInfo:
    label: str  # unique short name used in tables and file names
    path: str
    sha256: str
    size_bytes: int
    precision: str
    display_name: str
    baseline: str | None  # label of the model this one's deltas are taken against
    metadata: dict[str, Any]
    execution: str | None = None  # integer-kernels | emulated | float16 (the quantization record's); None: fp32


@dataclass
class DatasetInfo:
    name: str
    role: str  # "id", "ood" or "fit"
    spec: str
    key: str
    size: int
    num_classes: int | None
    synthetic: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)
    group: str | None = None  # OOD sets: near, far or synthetic; None: ungrouped (in the overall mean only)


@dataclass
class IdMetrics:
    model: str
    dataset: str
    n: int
    top1: float | None = metric("top-1")
    top5: float | None = metric("top-5")
    ece: float | None = metric("ECE", lower_is_better=True)


@dataclass(frozen=True, kw_only=True)
class OodResult(OODMetrics):
    """The OOD metrics (``OODMetrics``'s fields) of one model on one OOD set for one score."""

    model: str
    dataset: str  # an OOD set name, or a mean pseudo set (MEAN, mean:near, ...)
    score: str


ID_METRICS = metric_infos(IdMetrics)
# Every reported metric by name (ID_METRICS, then ood's OOD_METRICS): its title and better direction.
METRICS: dict[str, MetricInfo] = {m.name: m for m in (*ID_METRICS, *OOD_METRICS)}


@dataclass
class Delta:
    """``value - baseline_value`` (absolute) and that over ``|baseline_value|`` (relative)."""

    model: str
    baseline: str
    dataset: str
    score: str | None  # None for ID metrics
    metric: str
    value: float
    baseline_value: float
    abs: float
    rel: float | None


@dataclass
class Failure:
    model: str | None
    dataset: str | None
    stage: str  # "load-model", "load-data", "inference", "fit", "score", "bench", ...
    message: str

    def describe(self) -> str:
        cell = " x ".join(p for p in (self.model, self.dataset) if p) or "run"
        return f"[{cell}] {self.stage}: {self.message}"

    @classmethod
    def of(cls, model: str | None, dataset: str | None, stage: str, exc: BaseException) -> Failure:
        """The one way an exception becomes a failure record: our errors as written, others with their type."""
        message = str(exc) if isinstance(exc, VitqbenchError) else f"{type(exc).__name__}: {exc}"
        return cls(model, dataset, stage, first_line(message))


@dataclass
class AttentionRow:
    """eval --attention: one block of one model on one dataset (means over the dataset's samples)."""

    model: str
    dataset: str
    role: str  # id or ood
    block: int
    entropy: float  # attention entropy in nats, mean over heads and queries
    cls_concentration: float  # 1 - H(class token's attention) / log(tokens): 0 uniform, 1 on one token
    drift_js: float | None  # Jensen-Shannon divergence (bits, 0-1) of the class token's attention vs the baseline's
    # The last block's row only (the rollout runs through every block): mean over the images of the
    # Spearman rank correlation between this model's and the baseline's rollout over the patches.
    rollout_spearman: float | None = None


@dataclass
class AttentionMap:
    """eval --attention: one model's class-token rollout over the patch grid for one fixed image (report overlays)."""

    model: str
    dataset: str
    role: str  # id or ood
    index: int  # the image's index in its dataset
    path: str
    grid: tuple[int, int]  # (rows, cols) of patches
    rollout: list[float]  # rows * cols values, row-major, renormalized to sum to 1


@dataclass
class EvalResults:
    models: list[ModelInfo]
    datasets: list[DatasetInfo]
    scores: list[dict[str, Any]]
    id_metrics: list[IdMetrics]
    ood_metrics: list[OodResult]
    deltas: list[Delta]
    failures: list[Failure]
    settings: dict[str, Any]
    versions: dict[str, str]
    cache: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    bench: list[dict[str, Any]] = field(default_factory=list)
    # --tune: per model and tunable score, the grid, each point's validation AUROC and the chosen values
    tuning: list[dict[str, Any]] = field(default_factory=list)
    attention: list[AttentionRow] = field(default_factory=list)  # eval --attention
    attention_maps: list[AttentionMap] = field(default_factory=list)  # eval --attention: fixed images' rollouts
    # (dataset, index) -> the image as the model saw it (uint8 [H, W, C], resized and cropped); not in JSON
    attention_images: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)
    # (model label, dataset name) -> {"labels", "predictions", "paths", "<score>": scores}; not in JSON
    samples: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def id_dataset(self) -> str | None:
        return next((d.name for d in self.datasets if d.role == "id"), None)

    @property
    def ood_datasets(self) -> list[str]:
        return [d.name for d in self.datasets if d.role == "ood"]

    @property
    def means(self) -> list[str]:
        """The mean pseudo sets this run has, overall first."""
        return list(mean_members(self.datasets))

    @property
    def headline_means(self) -> list[str]:
        """What summaries show: near and far means, the overall mean when a real set is ungrouped;
        the synthetic mean only when nothing else exists."""
        members = mean_members(self.datasets)
        ungrouped = any(d.role == "ood" and d.group is None for d in self.datasets)
        out = [m for m in (group_mean(NEAR), group_mean(FAR)) if m in members]
        if ungrouped or (not out and MEAN in members):
            out.append(MEAN)
        return out or [m for m in members if m == group_mean(SYNTHETIC)]

    @property
    def headline_fpr(self) -> str:
        """The FPR@95 metric tables lead with (``--fpr-convention``; OpenOOD v1.5's by default)."""
        return headline_fpr(self.settings.get("fpr_convention", DEFAULT_FPR_CONVENTION))

    @property
    def score_names(self) -> list[str]:
        return [s["name"] for s in self.scores]

    def model(self, label: str) -> ModelInfo:
        return next(m for m in self.models if m.label == label)

    def id_metric(self, model: str) -> IdMetrics | None:
        return next((r for r in self.id_metrics if r.model == model), None)

    def ood_metric(self, model: str, dataset: str, score: str) -> OodResult | None:
        return next(
            (r for r in self.ood_metrics if (r.model, r.dataset, r.score) == (model, dataset, score)), None
        )

    def delta(self, model: str, dataset: str, score: str | None, metric: str) -> Delta | None:
        return next(
            (
                d
                for d in self.deltas
                if (d.model, d.dataset, d.score, d.metric) == (model, dataset, score, metric)
            ),
            None,
        )

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in NOT_IN_JSON}
        return _plain(d)


NOT_IN_JSON = ("samples", "attention_images")
# Further model outputs (attention) in a cell's samples, under this prefix: a score may share their
# names (the attn_entropy score reads the attn_entropy output).
OUTPUT_PREFIX = "output:"  # arrays for plots and --save-outputs


def _plain(obj: Any) -> Any:
    """JSON-ready copy: dataclasses to dicts, tuples to lists, numpy scalars to Python, NaN to None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def compute_deltas(
    models: list[ModelInfo], id_metrics: list[IdMetrics], ood_metrics: list[OodResult]
) -> list[Delta]:
    """Every metric of every model that has a baseline, against that baseline's same metric."""
    id_by = {r.model: r for r in id_metrics}
    ood_by = {(r.model, r.dataset, r.score): r for r in ood_metrics}
    deltas: list[Delta] = []
    for m in models:
        base = m.baseline
        if base is None or base == m.label:
            continue
        if m.label in id_by and base in id_by:
            row, ref = id_by[m.label], id_by[base]
            for info in ID_METRICS:
                name = info.name
                _append(deltas, m.label, base, row.dataset, None, name, getattr(row, name), getattr(ref, name))
        for (model, dataset, score), row in ood_by.items():
            ref = ood_by.get((base, dataset, score))
            if model != m.label or ref is None:
                continue
            for info in OOD_METRICS:
                name = info.name
                _append(deltas, model, base, dataset, score, name, getattr(row, name), getattr(ref, name))
    return deltas


def _append(out: list[Delta], model, base, dataset, score, metric, value, ref) -> None:
    if value is None or ref is None or not (np.isfinite(value) and np.isfinite(ref)):
        return
    diff = float(value) - float(ref)
    rel = diff / abs(float(ref)) if ref != 0 else None
    out.append(Delta(model, base, dataset, score, metric, float(value), float(ref), diff, rel))


# ------------------------------------------------------------------------------------------ sensitivity
LOGIT_ERROR = "logit_error"  # relative L2 error of the ID logits against the fp32 model's, in percent


@dataclass
class UnitSensitivity:
    """One unit (or ``all``: the uniform model) at one precision, everything else fp32: deltas in points.

    ``deltas`` keys: ``top1``, ``logit_error`` (the value itself, fp32 has 0) and ``SCORE.METRIC`` for
    the mean over the real OOD sets, each score refitted on the quantized model's own fit outputs; the
    same key ending ``@fp32-fit`` holds the score fitted once on the fp32 model (feature scores only).
    """

    unit: str
    precision: str
    weight_bytes: int
    deltas: dict[str, float] = field(default_factory=dict)
    label: str = ""  # the eval's model label
    execution: str | None = None  # integer-kernels | emulated (read from the graph ORT runs)


@dataclass
class SensitivityResults:
    model: str
    model_sha256: str
    granularity: str
    precisions: list[str]
    scores: list[str]
    units: list[str]
    fp32: dict[str, float]  # the fp32 model's absolute values (points), same keys as the deltas
    rows: list[UnitSensitivity]
    uniform: list[UnitSensitivity]
    ranking: list[dict[str, Any]] = field(default_factory=list)  # ID vs OOD ranks of the units
    plan: dict[str, Any] | None = None  # --budget: the chosen plan, its estimate, the verified model
    settings: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
