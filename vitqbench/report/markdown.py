"""report.md: the tables a person reads first (ID accuracy, then OOD detection, each with deltas)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitqbench.evaluate.results import METRICS, Delta, EvalResults, ModelInfo
from vitqbench.ood import FPR_CONVENTIONS

METRIC_TITLES = {name: f"{m.title} (%)" for name, m in METRICS.items()}
REPORT_OOD_METRICS = ("aupr_out", "auroc")  # then the headline FPR@95 (results.headline_fpr)


def render_report(results: EvalResults, plots: list[Path] | None = None) -> str:
    s = results.settings
    lines = [
        "# vitqbench evaluation report",
        "",
        f"ID set **{s['id']}**"
        + (f", scores fitted on **{s['fit']}**" if s.get("fit") else "")
        + f"; provider {s['provider']}, threads {s['threads'] or 'auto'}, batch size {s['batch_size']}; "
        f"{s['session_policy']}.",
        "",
        "Deltas are against each model's baseline: absolute in percentage points, then relative. "
        "For ECE and FPR@95 lower is better. " + _fpr_note(results),
        "",
    ]
    if results.failures:
        lines += ["## Failures", ""] + [f"- {f.describe()}" for f in results.failures] + [""]
    random = [m.label for m in results.models if _weights(m).startswith("random")]
    if random:
        lines += [
            f"> **Random-init weights** ({', '.join(random)}): their accuracy and OOD numbers say nothing about "
            "trained models; use them for speed and size only.",
            "",
        ]
    lines += _models_table(results)
    lines += _id_table(results)
    for metric in (*REPORT_OOD_METRICS, results.headline_fpr):
        for score in results.score_names:
            lines += _ood_table(results, metric, score)
    if results.bench:
        lines += _bench_table(results.bench)
    lines += _datasets_table(results)
    if results.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in results.warnings] + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    c = results.cache
    lines += [
        f"Cache {c['dir']}: {c['hits']} cells reused, {c['computed']} computed "
        f"({c['samples_computed']} samples run). Versions: "
        + ", ".join(f"{k} {v}" for k, v in results.versions.items() if k != "platform")
        + ".",
        "",
    ]
    return "\n".join(lines)


def _fpr_note(results: EvalResults) -> str:
    """Which FPR@95 the tables show, and where the other one is."""
    shown = results.headline_fpr
    other = next(name for name in FPR_CONVENTIONS.values() if name != shown)
    convention = next(k for k, v in FPR_CONVENTIONS.items() if v == shown)
    return (
        f"The tables show **{METRICS[shown].title}** (`--fpr-convention {convention}`); "
        f"{METRICS[other].title} is in results.json/csv as `{other}`. "
        "ID+: share of OOD images accepted at 95 % ID recall (OpenOOD's `fpr_recall`); OOD+: share of ID images "
        "rejected at 95 % OOD recall (what OpenOOD v1.5's evaluator and leaderboard report)."
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _delta(d: Delta | None) -> str:
    if d is None:
        return ""
    rel = "" if d.rel is None else f", {100 * d.rel:+.1f}%"
    return f"{100 * d.abs:+.2f}{rel}"


def _with_delta(value: float | None, d: Delta | None) -> str:
    text = _pct(value)
    return f"{text} ({_delta(d)})" if d is not None else text


def _weights(model: ModelInfo) -> str:
    """Where the weights came from: a pretrained tag, a checkpoint file or a random seed."""
    source = model.metadata.get("source") or {}
    kind = source.get("kind", "?")
    if kind == "random":
        return f"random (seed {source.get('seed')})"
    if kind == "checkpoint":
        return f"checkpoint {Path(str(source.get('path', '?'))).name}"
    return f"pretrained {source.get('tag') or ''}".strip()


def _models_table(results: EvalResults) -> list[str]:
    rows = [
        [
            m.label,
            m.precision,
            m.display_name,
            _weights(m),
            f"{m.size_bytes / 2**20:.1f}",
            "(reference)" if m.baseline in (None, m.label) else m.baseline,
            m.sha256[:12],
        ]
        for m in results.models
    ]
    return ["## Models", ""] + _table(
        ["model", "precision", "timm model", "weights", "size (MiB)", "baseline", "sha256"], rows
    )


def _id_table(results: EvalResults) -> list[str]:
    if not results.id_metrics:
        return ["## ID accuracy", "", "No ID accuracy: the ID set has no labels or no model ran on it.", ""]
    first = results.id_metrics[0]
    header = ["model", "precision", "top-1 (%)", "Δ top-1", "top-5 (%)", "Δ top-5", "ECE (%)", "Δ ECE"]
    rows = []
    for m in results.models:
        r = results.id_metric(m.label)
        if r is None:
            continue
        row = [m.label, m.precision]
        for metric in ("top1", "top5", "ece"):
            row += [_pct(getattr(r, metric)), _delta(results.delta(m.label, r.dataset, None, metric))]
        rows.append(row)
    return [f"## ID accuracy ({first.dataset}, n={first.n})", ""] + _table(header, rows)


def _ood_table(results: EvalResults, metric: str, score: str) -> list[str]:
    sets = [*results.ood_datasets, *results.means]
    rows = []
    for m in results.models:
        cells = []
        for name in sets:
            r = results.ood_metric(m.label, name, score)
            value = None if r is None else getattr(r, metric)
            cells.append(_with_delta(value, results.delta(m.label, name, score, metric)))
        if any(c != "–" for c in cells):
            rows.append([m.label, m.precision, *cells])
    if not rows:
        return []
    better = METRICS[metric].better
    title = f"## {METRIC_TITLES[metric]} — score {score} ({better} is better)"
    return [title, ""] + _table(["model", "precision", *sets], rows)


def _bench_table(records: list[dict[str, Any]]) -> list[str]:
    from vitqbench.evaluate.benching import BENCH_COLUMNS

    rows = [[_fmt(r.get(k)) for k in BENCH_COLUMNS] for r in records]
    return ["## Latency and size", ""] + _table(list(BENCH_COLUMNS), rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _datasets_table(results: EvalResults) -> list[str]:
    rows = [
        [
            d.name,
            d.role,
            d.spec,
            str(d.size),
            str(d.num_classes or "–"),
            "yes" if d.synthetic else "no",
            str(len(d.skipped)),
        ]
        for d in results.datasets
    ]
    return ["## Datasets", ""] + _table(
        ["name", "role", "spec", "images", "classes", "synthetic", "skipped"], rows
    )
