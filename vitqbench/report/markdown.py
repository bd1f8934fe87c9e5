"""report.md and report.html: the summaries a person reads first, then the details, then the plots.

Both are rendered from one list of blocks (``report_blocks``), so they always say the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitqbench.ood import FPR_CONVENTIONS
from vitqbench.report.document import Block, Bullets, Code, Heading, Image, Para, Strong, Table, to_html, to_markdown
from vitqbench.report.plots import delta_metrics, model_label, ordered_ood_sets
from vitqbench.results import METRICS, Delta, EvalResults, ModelInfo, mean_members, mean_title

METRIC_TITLES = {name: f"{m.title} (%)" for name, m in METRICS.items()}
# A relative change is only shown where the baseline is at least this large: below it, a few points
# read as +180 % (FPR@95 from 23 % to 65 %) and say less than the absolute change.
RELATIVE_MIN_BASELINE = 0.5
TITLE = "vitqbench evaluation report"


def render_report(results: EvalResults, plots: list[Path] | None = None) -> str:
    return to_markdown(report_blocks(results, plots or []))


def render_html(results: EvalResults, plots: list[Path] | None = None) -> str:
    return to_html(report_blocks(results, plots or []), TITLE)


def report_blocks(results: EvalResults, plots: list[Path]) -> list[Block]:
    s = results.settings
    id_name = results.id_dataset or s.get("id_name") or s["id"]
    intro: list = ["ID set ", Strong(str(id_name))]
    if str(id_name) != str(s["id"]):
        intro += [" (", Code(str(s["id"])), ")"]
    if s.get("fit"):
        intro += [", scores fitted on ", Strong(str(s["fit"]))]
    intro.append(
        f"; provider {s['provider']}, threads {s['threads'] or 'auto'}, batch size {s['batch_size']}; "
        f"{s['session_policy']}."
    )
    blocks: list[Block] = [
        Heading(TITLE, 1),
        Para(intro),
        Para(
            [
                "Deltas are quantized minus baseline, in percentage points; the relative change follows only "
                f"where the baseline is at least {100 * RELATIVE_MIN_BASELINE:.0f} %. For ECE and FPR lower is "
                f"better. {_fpr_note(results)} "
                "Near-OOD and far-OOD sets are averaged apart, as OpenOOD v1.5 reports them; "
                "synthetic sets are averaged on their own and are in no headline mean."
            ]
        ),
    ]
    if results.failures:
        blocks += [Heading("Failures"), Bullets([[f.describe()] for f in results.failures])]
    random = [m.label for m in results.models if _weights(m).startswith("random")]
    if random:
        blocks.append(
            Para(
                [
                    Strong("Random-init weights"),
                    f" ({', '.join(random)}): their accuracy and OOD numbers say nothing about trained models; "
                    "use them for speed and size only.",
                ],
                note=True,
            )
        )
    if results.warnings:
        blocks += [Heading("Warnings"), Bullets([[w] for w in results.warnings])]
    blocks += _tuning_blocks(results)
    blocks += _summary(results)
    blocks += _augment_blocks(results)
    blocks += _id_table(results)
    blocks += _models_table(results)
    blocks += _details(results)
    blocks += _attention_blocks(results)
    if results.bench:
        blocks += _bench_table(results.bench)
    blocks += _datasets_table(results)
    if plots:
        blocks.append(Heading("Plots"))
        blocks += [Image(p, f"plots/{p.name}", _caption(p)) for p in plots]
    c = results.cache
    blocks.append(
        Para(
            [
                f"Cache {c['dir']}: {c['hits']} cells reused, {c['computed']} computed "
                f"({c['samples_computed']} samples run). Versions: "
                + ", ".join(f"{k} {v}" for k, v in results.versions.items() if k != "platform")
                + "."
            ]
        )
    )
    return blocks


def _tuning_blocks(results: EvalResults) -> list[Block]:
    """What --tune chose on the validation sets, or that the scores ran with fixed defaults."""
    s = results.settings
    if not s.get("tune"):
        tunable = [spec["name"] for spec in results.scores if spec.get("tunable")]
        if not tunable:
            return []
        return [
            Para(
                [
                    f"Scores ran with fixed default parameters (no --tune); OpenOOD v1.5 tunes {', '.join(tunable)} "
                    "on ID-val vs OOD-val, so their numbers can differ from its tables."
                ]
            )
        ]
    rows = [
        [
            t["model"],
            t["score"],
            ", ".join(f"{k}={v}" for k, v in t["chosen"].items()),
            _pct(max(p["val_auroc"] for p in t["points"] if p["val_auroc"] is not None)),
            "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in t["grid"].items()),
        ]
        for t in results.tuning
    ]
    title = f"Tuning on {s.get('val_id')} vs {s.get('val_ood')} (best validation AUROC, OpenOOD's grids)"
    return [Heading(title), Table(["model", "score", "chosen", "val AUROC (%)", "grid"], rows, numeric={3})]


def _attention_blocks(results: EvalResults) -> list[Block]:
    """eval --attention: per model and block, focus on ID vs the real OOD sets, and drift from the baseline."""
    if not results.attention:
        return []
    real_ood = {d.name for d in results.datasets if d.role == "ood" and not d.synthetic}
    by: dict[tuple[str, int], dict[str, list[Any]]] = {}
    for r in results.attention:
        side = "id" if r.role == "id" else "ood" if r.dataset in real_ood else None
        if side is not None:
            cell = by.setdefault((r.model, r.block), {})
            cell.setdefault(side, []).append(r)

    def mean(rows: list[Any], field: str) -> float | None:
        values = [getattr(r, field) for r in rows if getattr(r, field) is not None]
        return sum(values) / len(values) if values else None

    def num(value: float | None, digits: int = 3) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    rows, answers = [], []
    for model in results.models:
        blocks = sorted(b for (m, b) in by if m == model.label)
        more_on_ood = []
        for block in blocks:
            cell = by[(model.label, block)]
            id_rows, ood_rows = cell.get("id", []), cell.get("ood", [])
            d_id, d_ood = mean(id_rows, "drift_js"), mean(ood_rows, "drift_js")
            rows.append([model_label(model), str(block), num(mean(id_rows, "entropy")), num(mean(ood_rows, "entropy")),
                         num(mean(id_rows, "cls_concentration")), num(mean(ood_rows, "cls_concentration")),
                         num(d_id, 4), num(d_ood, 4)])  # fmt: skip
            if d_id is not None and d_ood is not None and d_ood > d_id:
                more_on_ood.append((d_ood / d_id if d_id > 0 else float("inf"), block))
        if model.baseline not in (None, model.label) and blocks:
            verdict = f"moved more on OOD than on ID inputs in {len(more_on_ood)} of {len(blocks)} blocks"
            if more_on_ood:
                ratio, block = max(more_on_ood)
                verdict += f" (most: block {block}, {ratio:.2f}x the ID drift)"
            answers.append([f"{model_label(model)}: class-token attention {verdict}."])
    header = ["model", "block", "entropy ID", "entropy OOD", "cls concentration ID", "cls concentration OOD",
              "drift ID (JS)", "drift OOD (JS)"]  # fmt: skip
    return [
        Heading("Attention, ID vs OOD"),
        Para(["Per block: attention entropy (nats, mean over heads and queries), the class token's attention "
              "concentration (1 - H / log tokens), and the Jensen-Shannon divergence (bits) of the class token's "
              "attention from the baseline's on the same images; OOD = mean over the real (non-synthetic) OOD sets."]),
        Table(header, rows, numeric=set(range(1, 8))),
        *([Bullets(answers)] if answers else []),
        *_rollout_table(results),
    ]  # fmt: skip


def _rollout_table(results: EvalResults) -> list[Block]:
    """Per quantized model, the rollout's rank correlation with the baseline's on the ID set and each OOD set."""
    rho = {(r.model, r.dataset): r.rollout_spearman for r in results.attention if r.rollout_spearman is not None}
    if not rho:
        return []
    sets = [n for n in [results.id_dataset, *(n for n, _ in ordered_ood_sets(results))] if any(d == n for _, d in rho)]
    models = [m for m in results.models if any(k[0] == m.label for k in rho)]
    rows = [[model_label(m), *(_num(rho.get((m.label, n)), 3) for n in sets)] for m in models]
    header = ["model", *(f"{n} (ID)" if n == results.id_dataset else n for n in sets)]
    return [
        Para(["Attention rollout (the class token's, through every block, over the patches): Spearman rank "
              "correlation with the baseline's on the same image, mean over the images; 1 = the same ranking of "
              "patches."]),
        Table(header, rows, numeric=set(range(1, len(header)))),
    ]  # fmt: skip


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fpr_note(results: EvalResults) -> str:
    """Which FPR@95 the tables show, and where the other one is."""
    shown = results.headline_fpr
    other = next(name for name in FPR_CONVENTIONS.values() if name != shown)
    convention = next(k for k, v in FPR_CONVENTIONS.items() if v == shown)
    return (
        f"The tables show {METRICS[shown].title} (--fpr-convention {convention}); "
        f"{METRICS[other].title} is in results.json/csv as {other}. "
        "ID+: share of OOD images accepted at 95 % ID recall (OpenOOD's fpr_recall); OOD+: share of ID images "
        "rejected at 95 % OOD recall (what OpenOOD v1.5's evaluator and leaderboard report)."
    )


def _caption(path: Path) -> str:
    kinds = {
        "delta": "Quantization deltas (quantized minus baseline)",
        "roc": "ROC curves per OOD set",
        "hist": "Score histograms, ID vs OOD",
        "attention_entropy": "Attention entropy per block, ID vs each OOD set, per model",
        "attention_drift": "Class-token attention drift from the baseline per block, ID vs each OOD set",
        "attention_rollout": "Attention rollout on fixed ID and OOD images, baseline next to each quantized model",
    }
    kind = next((k for k in kinds if path.stem == k or path.stem.startswith(f"{k}_")), path.stem)
    return kinds.get(kind, path.stem) + f": {path.name}"


def _pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{100 * value:.2f}"


def format_delta(d: Delta | None) -> str:
    """``+1.23`` points, with ``, +1.5%`` where the baseline is far enough from 0 to make that meaningful."""
    if d is None:
        return ""
    text = f"{100 * d.abs:+.2f}"
    if d.rel is not None and abs(d.baseline_value) >= RELATIVE_MIN_BASELINE:
        text += f", {100 * d.rel:+.1f}%"
    return text


def _weights(model: ModelInfo) -> str:
    """Where the weights came from: a pretrained tag, a checkpoint file or a random seed."""
    source = model.metadata.get("source") or {}
    kind = source.get("kind", "?")
    if kind == "random":
        return f"random (seed {source.get('seed')})"
    if kind == "checkpoint":
        return f"checkpoint {Path(str(source.get('path', '?'))).name}"
    return f"pretrained {source.get('tag') or ''}".strip()


def _quant_field(m: ModelInfo, name: str) -> str:
    quant = (m.metadata or {}).get("quantization") or {}
    return str(getattr(m, name, None) or quant.get(name) or "–")


def _summary(results: EvalResults) -> list[Block]:
    """Per headline mean (near, far): every score x model with all four metrics and their deltas."""
    blocks: list[Block] = []
    members = mean_members(results.datasets)
    augments = training_augments(results)
    for mean in results.headline_means:
        rows = []
        for score in results.score_names:
            for m in results.models:
                r = results.ood_metric(m.label, mean, score)
                if r is None:
                    continue
                row = [score, m.label, *([augments[m.label]] if augments else []), m.precision]
                for metric in delta_metrics(results):
                    row += [_pct(getattr(r, metric)), format_delta(results.delta(m.label, mean, score, metric))]
                rows.append(row)
        if not rows:
            continue
        header = ["score", "model", *(["augment"] if augments else []), "precision"]
        for metric in delta_metrics(results):
            header += [METRIC_TITLES[metric], "Δ"]
        title = f"Summary: {mean_title(mean)} mean ({', '.join(members[mean])})"
        blocks += [Heading(title), Table(header, rows, numeric=set(range(4 if augments else 3, len(header))))]
    return blocks


def _models_table(results: EvalResults) -> list[Block]:
    rows = [
        [
            m.label,
            m.precision,
            _quant_field(m, "scheme"),
            _quant_field(m, "execution"),
            m.display_name,
            _weights(m),
            f"{m.size_bytes / 2**20:.1f}",
            "(reference)" if m.baseline in (None, m.label) else m.baseline,
            m.sha256[:12],
        ]
        for m in results.models
    ]
    header = ["model", "precision", "scheme", "execution", "timm model", "weights", "size (MiB)", "baseline", "sha256"]
    return [Heading("Models"), Table(header, rows, numeric={6})]


def _id_table(results: EvalResults) -> list[Block]:
    if not results.id_metrics:
        return [Heading("ID accuracy"), Para(["No ID accuracy: the ID set has no labels or no model ran on it."])]
    first = results.id_metrics[0]
    augments = training_augments(results)
    lead = ["model", *(["augment"] if augments else []), "precision"]
    header = [*lead, "top-1 (%)", "Δ top-1", "top-5 (%)", "Δ top-5", "ECE (%)", "Δ ECE"]
    rows = []
    for m in results.models:
        r = results.id_metric(m.label)
        if r is None:
            continue
        row = [m.label, *([augments[m.label]] if augments else []), m.precision]
        for metric in ("top1", "top5", "ece"):
            row += [_pct(getattr(r, metric)), format_delta(results.delta(m.label, r.dataset, None, metric))]
        rows.append(row)
    title = f"ID accuracy ({first.dataset}, n={first.n})"
    return [Heading(title), Table(header, rows, numeric=set(range(len(lead), len(header))))]


def training_augments(results: EvalResults) -> dict[str, str]:
    """Model label -> the augmentation its weights were trained with (`vitqbench train --augment`), when
    the models differ in it (a study axis); empty when they all share one (or none says)."""
    out = {}
    for m in results.models:
        train = ((m.metadata or {}).get("source") or {}).get("train") or {}
        out[m.label] = str(train.get("augment") or "–")
    return out if len(set(out.values())) > 1 else {}


def _augment_blocks(results: EvalResults) -> list[Block]:
    """Quantization deltas side by side per training augmentation: does augmentation buy robustness?"""
    augments = training_augments(results)
    if not augments:
        return []
    kinds = list(dict.fromkeys(augments.values()))
    precisions = list(dict.fromkeys(m.precision for m in results.models if m.baseline not in (None, m.label)))

    def model(augment: str, precision: str) -> ModelInfo | None:
        return next((m for m in results.models if augments[m.label] == augment and m.precision == precision), None)

    def execution(precision: str) -> str:
        m = next(m for m in results.models if m.precision == precision)
        return f"{precision} ({_quant_field(m, 'execution')})"

    blocks: list[Block] = [
        Heading("Quantization deltas by training augmentation"),
        Para(["The same quantization applied to models trained with different augmentation (",
              Code("vitqbench train --augment"), "): quantized minus its own fp32 baseline, in points, side by side."]),
    ]  # fmt: skip
    if results.id_metrics:
        header = ["precision", *(f"top-1 (%) {a}" for a in kinds), *(f"Δ top-1 {a}" for a in kinds)]
        rows = []
        for precision in ["fp32", *precisions]:
            found = [model(a, precision) for a in kinds]
            values = [_pct(getattr(results.id_metric(m.label), "top1", None)) if m else "–" for m in found]
            deltas = [
                format_delta(results.delta(m.label, results.id_dataset, None, "top1")) if m else "–" for m in found
            ]
            rows.append([execution(precision) if precision != "fp32" else "fp32", *values, *deltas])
        blocks.append(Table(header, rows, numeric=set(range(1, len(header)))))
    fpr = results.headline_fpr
    for mean in results.headline_means:
        header = ["score", "precision"]
        header += [f"{METRICS['auroc'].title} (%) {a}" for a in kinds] + [f"Δ AUROC {a}" for a in kinds]
        header += [f"Δ {METRICS[fpr].title} {a}" for a in kinds]
        rows = []
        for score in results.score_names:
            for precision in ["fp32", *precisions]:
                found = [model(a, precision) for a in kinds]
                if not any(m and results.ood_metric(m.label, mean, score) for m in found):
                    continue
                values = [_pct(getattr(results.ood_metric(m.label, mean, score), "auroc", None)) if m else "–"
                          for m in found]  # fmt: skip
                cells = [format_delta(results.delta(m.label, mean, score, metric)) if m else "–"
                         for metric in ("auroc", fpr) for m in found]  # fmt: skip
                label = "fp32" if precision == "fp32" else execution(precision)
                rows.append([score, label, *values, *cells])
        if rows:
            blocks += [
                Para([Strong(f"{mean_title(mean)} mean")]),
                Table(header, rows, numeric=set(range(2, len(header)))),
            ]
    return blocks


def _details(results: EvalResults) -> list[Block]:
    """Per OOD set and mean, one table per metric: rows score x model, cells value (delta)."""
    sets = [n for n, _ in ordered_ood_sets(results)] + results.means
    groups = {d.name: d.group for d in results.datasets}
    header = ["score", "model"] + [
        f"{n} ({groups.get(n) or 'ungrouped'})" if n in groups else f"{mean_title(n)} mean" for n in sets
    ]
    blocks: list[Block] = []
    for metric in delta_metrics(results):
        rows = []
        for score in results.score_names:
            for m in results.models:
                cells = []
                for name in sets:
                    r = results.ood_metric(m.label, name, score)
                    d = format_delta(results.delta(m.label, name, score, metric))
                    value = _pct(None if r is None else getattr(r, metric))
                    cells.append(f"{value} ({d})" if d else value)
                if any(c != "–" for c in cells):
                    rows.append([score, m.label, *cells])
        if rows:
            blocks += [
                Heading(f"{METRIC_TITLES[metric]} per OOD set ({METRICS[metric].better} is better)", 3),
                Table(header, rows, numeric=set(range(2, len(header)))),
            ]
    return [Heading("Details per OOD set"), *blocks] if blocks else []


BENCH_FORMAT: tuple[tuple[str, str, str], ...] = (
    ("model", "model", "s"),
    ("precision", "precision", "s"),
    ("execution", "execution", "s"),
    ("batch", "batch", "d"),
    ("threads", "threads", "d"),
    ("p50_ms", "p50 (ms)", ".2f"),
    ("mean_ms", "mean (ms)", ".2f"),
    ("throughput_ips", "throughput (img/s)", ".1f"),
    ("speedup", "speed-up", "x"),
    ("peak_rss_mb", "peak RSS (MiB)", ".0f"),
    ("model_mb", "file (MiB)", ".1f"),
    ("status", "status", "s"),
)


def _bench_table(records: list[dict[str, Any]]) -> list[Block]:
    columns = [c for c in BENCH_FORMAT if c[0] != "execution" or any(r.get("execution") for r in records)]
    rows = [[_fmt(r.get(key), spec) for key, _, spec in columns] for r in records]
    numeric = {i for i, (_, _, spec) in enumerate(columns) if spec != "s"}
    return [Heading("Latency and size"), Table([title for _, title, _ in columns], rows, numeric)]


def _fmt(value: Any, spec: str) -> str:
    if value is None or value == "":
        return "–"
    if spec == "s" or isinstance(value, str):
        return str(value)
    if spec == "x":
        return f"{float(value):.2f}x"
    if spec == "d":
        return str(int(value))
    return format(float(value), spec)


def _datasets_table(results: EvalResults) -> list[Block]:
    rows = [
        [
            d.name,
            d.role,
            d.group or "–",
            d.spec,
            str(d.size),
            str(d.num_classes or "–"),
            "yes" if d.synthetic else "no",
            str(len(d.skipped)),
        ]
        for d in results.datasets
    ]
    header = ["name", "role", "group", "spec", "images", "classes", "synthetic", "skipped"]
    return [Heading("Datasets"), Table(header, rows, numeric={4, 5, 7})]


__all__ = ["METRIC_TITLES", "format_delta", "model_label", "render_html", "render_report", "report_blocks"]
