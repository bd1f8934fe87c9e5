"""PNG plots of one EvalResults: grouped bars per precision, ROC curves, score histograms."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitqbench.evaluate.results import MEAN, EvalResults
from vitqbench.files import atomic_path
from vitqbench.report.markdown import METRIC_TITLES

PRECISION_COLORS = {"fp32": "#1f77b4", "int8": "#ff7f0e", "int4": "#d62728"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, work without a display
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def write_plots(results: EvalResults, plot_dir: Path) -> list[Path]:
    if not results.models:
        return []
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if results.id_metrics:
        written.append(
            _bars(
                results, plot_dir, "top1", lambda m: _id_value(results, m, "top1"), results.id_dataset or "ID"
            )
        )
    for metric in ("auroc", "aupr_out", results.headline_fpr):
        written.append(_score_bars(results, plot_dir, metric))
    if results.score_names:
        primary = results.score_names[0]
        written += [p for name in results.ood_datasets if (p := _roc(results, plot_dir, name, primary))]
        written += _histograms(results, plot_dir, primary)
    return [p for p in written if p is not None]


def _id_value(results: EvalResults, label: str, metric: str) -> float | None:
    r = results.id_metric(label)
    return None if r is None else getattr(r, metric)


def _families(results: EvalResults) -> dict[str, list[str]]:
    """Models grouped by their baseline (each quantized model sits beside its reference)."""
    groups: dict[str, list[str]] = {}
    for m in results.models:
        groups.setdefault(m.baseline or m.label, []).append(m.label)
    return groups


def _draw_bars(ax, results: EvalResults, value: Callable[[str], float | None]) -> bool:
    """Bars of ``value`` per model, grouped by baseline family and coloured by precision."""
    groups = _families(results)
    width = 0.8 / max(len(g) for g in groups.values())
    seen: set[str] = set()
    for gi, members in enumerate(groups.values()):
        for mi, label in enumerate(members):
            v = value(label)
            if v is None:
                continue
            precision = results.model(label).precision
            ax.bar(
                gi + (mi - (len(members) - 1) / 2) * width,
                100 * v,
                width * 0.95,
                color=PRECISION_COLORS.get(precision, "#7f7f7f"),
                label=precision if precision not in seen else None,
            )
            seen.add(precision)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([results.model(k).display_name for k in groups], rotation=15, ha="right", fontsize=7)
    if seen:
        ax.legend(fontsize=7)
    return bool(seen)


def _bars(
    results: EvalResults, plot_dir: Path, metric: str, value: Callable[[str], float | None], subtitle: str
) -> Path | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(_families(results)) + 2), 3.6))
    if not _draw_bars(ax, results, value):
        plt.close(fig)
        return None
    ax.set_ylabel(METRIC_TITLES[metric])
    ax.set_title(f"{METRIC_TITLES[metric]} per precision ({subtitle})", fontsize=9)
    return _save(fig, plot_dir / f"bars_{metric}.png")


def _score_bars(results: EvalResults, plot_dir: Path, metric: str) -> Path | None:
    """One panel per score: the metric averaged over the OOD sets, per model and precision."""
    scores = results.score_names
    if not scores:
        return None
    plt = _plt()
    cols = min(len(scores), 4)
    rows = -(-len(scores) // cols)
    width = max(3.2, 1.2 * len(_families(results)) + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.2 * rows), squeeze=False)
    drawn = False
    for ax, score in zip(axes.flat, scores, strict=False):

        def value(label: str, score: str = score) -> float | None:
            r = results.ood_metric(label, MEAN, score)
            return None if r is None else getattr(r, metric)

        drawn |= _draw_bars(ax, results, value)
        ax.set_title(score, fontsize=9)
        ax.set_ylabel(METRIC_TITLES[metric], fontsize=8)
    for ax in list(axes.flat)[len(scores) :]:
        ax.set_visible(False)
    if not drawn:
        plt.close(fig)
        return None
    fig.suptitle(f"{METRIC_TITLES[metric]}, mean over OOD sets, per precision", fontsize=10)
    fig.tight_layout()
    return _save(fig, plot_dir / f"bars_{metric}.png")


def _roc(results: EvalResults, plot_dir: Path, ood: str, score: str) -> Path | None:
    from sklearn.metrics import roc_curve

    id_name = results.id_dataset
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    drawn = 0
    for m in results.models:
        id_s = results.samples.get((m.label, id_name), {}).get(score)
        ood_s = results.samples.get((m.label, ood), {}).get(score)
        if id_s is None or ood_s is None:
            continue
        scores = np.concatenate([id_s, ood_s])
        finite = np.isfinite(scores)
        truth = np.concatenate([np.ones(len(id_s)), np.zeros(len(ood_s))])  # ID is the positive class
        fpr, tpr, _ = roc_curve(truth[finite], scores[finite])
        r = results.ood_metric(m.label, ood, score)
        auroc = f" (AUROC {100 * r.auroc:.1f})" if r else ""
        ax.plot(
            fpr,
            tpr,
            label=f"{m.label}{auroc}",
            color=PRECISION_COLORS.get(m.precision),
            linestyle="-" if m.precision == "fp32" else "--",
        )
        drawn += 1
    if not drawn:
        _plt().close(fig)
        return None
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8)
    ax.set_xlabel("false positive rate (OOD accepted as ID)")
    ax.set_ylabel("true positive rate (ID kept)")
    ax.set_title(f"ROC {id_name} vs {ood}, {score}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, plot_dir / f"roc_{_slug(ood)}_{_slug(score)}.png")


def _histograms(results: EvalResults, plot_dir: Path, score: str) -> list[Path]:
    id_name = results.id_dataset
    plt = _plt()
    written = []
    for base, members in _families(results).items():
        members = [m for m in members if score in results.samples.get((m, id_name), {})]
        if not members:
            continue
        fig, axes = plt.subplots(1, len(members), figsize=(3.6 * len(members), 3), squeeze=False)
        for ax, label in zip(axes[0], members, strict=True):
            id_s = results.samples[(label, id_name)][score]
            sets = [(id_name, id_s)] + [
                (name, results.samples[(label, name)][score])
                for name in results.ood_datasets
                if score in results.samples.get((label, name), {})
            ]
            finite = np.concatenate([s[np.isfinite(s)] for _, s in sets])
            bins = np.histogram_bin_edges(finite, bins=40) if finite.size else 40
            for name, s in sets:
                ax.hist(s[np.isfinite(s)], bins=bins, density=True, alpha=0.45, label=name)
            ax.set_title(f"{label} ({results.model(label).precision})", fontsize=8)
            ax.set_xlabel(f"{score} score (higher = more ID)", fontsize=8)
        axes[0][0].legend(fontsize=7)
        written.append(_save(fig, plot_dir / f"hist_{_slug(base)}_{_slug(score)}.png"))
    return written
