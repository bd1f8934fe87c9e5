"""PNG plots of one EvalResults: quantization deltas, ROC curves, score histograms and (eval --attention)
attention entropy, drift and rollout overlays.

Every model keeps one style in every plot: its colour is its family (the baseline it is compared
with; with a single family, its precision), its line style and hatch its precision, and its legend
entry is its own label with the quantization scheme and how it executes when the results carry them.
ROC curves come from ``vitqbench.ood.roc_curve``, the curve behind the reported AUROC (non-finite
scores ranked most-OOD), so a plotted curve and its number never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitqbench.errors import VitqbenchError
from vitqbench.files import atomic_path
from vitqbench.ood import roc_curve
from vitqbench.report.names import unique_slugs
from vitqbench.results import METRICS, OOD_GROUPS, EvalResults, ModelInfo, mean_title


def delta_metrics(results: EvalResults) -> tuple[str, ...]:
    """The OOD metrics summaries and delta plots show: the headline FPR is ``--fpr-convention``'s."""
    return ("auroc", "aupr_in", "aupr_out", results.headline_fpr)
_FAMILY_MAPS = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys", "YlOrBr", "PuRd")
_PRECISION_COLORS = ("#1f4e9c", "#e07b00", "#2a9d2a", "#c62828", "#7b4fa0", "#6d6d6d")
_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
_HATCHES = ("", "///", "...", "xx", "\\\\", "oo")
_SET_COLORS = ("#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, work without a display
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Style:
    color: str | tuple
    linestyle: str | tuple
    hatch: str
    label: str


def model_label(m: ModelInfo) -> str:
    """The model's own label, with its scheme and execution (integer kernels, emulated...) if known."""
    quant = (m.metadata or {}).get("quantization") or {}
    extra = [
        str(v)
        for v in (
            getattr(m, "scheme", None) or quant.get("scheme"),
            getattr(m, "execution", None) or quant.get("execution"),
        )
        if v
    ]
    return f"{m.label} ({', '.join(extra)})" if extra else m.label


def families(results: EvalResults) -> dict[str, list[ModelInfo]]:
    """Models grouped by their baseline, in run order (each quantized model beside its reference)."""
    groups: dict[str, list[ModelInfo]] = {}
    for m in results.models:
        groups.setdefault(m.baseline or m.label, []).append(m)
    return groups


def model_styles(results: EvalResults) -> dict[str, Style]:
    import matplotlib

    groups = families(results)
    precisions = list(dict.fromkeys(m.precision for m in results.models))
    styles = {}
    for fi, members in enumerate(groups.values()):
        cmap = matplotlib.colormaps[_FAMILY_MAPS[fi % len(_FAMILY_MAPS)]]
        for m in members:
            pi = precisions.index(m.precision)
            if len(groups) == 1:
                color = _PRECISION_COLORS[pi % len(_PRECISION_COLORS)]
            else:  # family hue; the precision darkens or lightens it (and sets the line style)
                color = cmap(0.9 - 0.45 * pi / max(len(precisions) - 1, 1))
            styles[m.label] = Style(
                color, _LINESTYLES[pi % len(_LINESTYLES)], _HATCHES[pi % len(_HATCHES)], model_label(m)
            )
    return styles


def ordered_ood_sets(results: EvalResults) -> list[tuple[str, str | None]]:
    """(name, group) of the OOD sets: near, far, ungrouped, then synthetic."""
    rank = {g: i for i, g in enumerate(("near", "far", None, "synthetic"))}
    sets = [(d.name, d.group) for d in results.datasets if d.role == "ood"]
    return sorted(sets, key=lambda s: rank.get(s[1], len(OOD_GROUPS)))


def select_plot_scores(requested: str | None, labels: list[str]) -> list[str] | None:
    """``--plot-scores msp,vim`` -> the run's score labels it names (a bare name matches ``knn:k=50``);
    None (the default) plots every score, ``none`` none; an unknown name is one error."""
    if requested is None or requested.strip() == "all":
        return None
    wanted = [w.strip() for w in requested.split(",") if w.strip()]
    if wanted == ["none"]:
        return []
    chosen = []
    for w in wanted:
        match = [label for label in labels if w in (label, label.split(":")[0])]
        if not match:
            raise VitqbenchError(f"--plot-scores: {w!r} is not a score of this run ({', '.join(labels)}, all or none)")
        chosen += [m for m in match if m not in chosen]
    return chosen


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def write_plots(results: EvalResults, plot_dir: Path, plot_scores: list[str] | None = None) -> list[Path]:
    """Delta plots (ID, each headline mean), then ROC curves and histograms of ``plot_scores`` (default all)."""
    if not results.models:
        return []
    plot_dir.mkdir(parents=True, exist_ok=True)
    scores = results.score_names if plot_scores is None else [s for s in results.score_names if s in plot_scores]
    names = unique_slugs([*results.headline_means, *results.score_names])
    figures = [("delta_id", lambda: id_delta_figure(results))]
    figures += [(f"delta_{names[m]}", lambda m=m: delta_figure(results, m)) for m in results.headline_means]
    for score in scores:
        figures.append((f"roc_{names[score]}", lambda s=score: roc_figure(results, s)))
        figures.append((f"hist_{names[score]}", lambda s=score: histogram_figure(results, s)))
    if results.attention:
        figures += [("attention_entropy", lambda: attention_entropy_figure(results))]
        figures += [("attention_drift", lambda: attention_drift_figure(results))]
        family_names = unique_slugs(list(families(results)))
        figures += [
            (f"attention_rollout_{family_names[base]}", lambda ms=members: rollout_figure(results, ms))
            for base, members in families(results).items()
        ]
    written = []
    for stem, make in figures:  # one figure open at a time
        fig = make()
        if fig is not None:
            written.append(_save(fig, plot_dir / f"{stem}.png"))
    return written


def _quantized(results: EvalResults) -> list[ModelInfo]:
    return [m for m in results.models if m.baseline not in (None, m.label)]


def _delta_panel(ax, rows: list[str], bars: list[tuple[int, float | None, Style]], n_per_row: int, xlabel: str):
    """Horizontal bars of deltas around a zero line, each with its value written at its end."""
    height = 0.8 / max(n_per_row, 1)
    values = [v for _, v, _ in bars if v is not None]
    for slot, (row, value, style) in enumerate(bars):
        if value is None:
            continue
        y = row + (slot % n_per_row - (n_per_row - 1) / 2) * height
        ax.barh(y, value, height * 0.9, color=style.color, hatch=style.hatch, edgecolor="white", linewidth=0.3)
        ax.annotate(
            f"{value:+.2f}",
            (value, y),
            xytext=(3 if value >= 0 else -3, 0),
            textcoords="offset points",
            ha="left" if value >= 0 else "right",
            va="center",
            fontsize=6.5,
        )
    ax.axvline(0, color="black", linewidth=0.9)
    limit = max([abs(v) for v in values] + [0.05]) * 1.45  # room for the value labels
    ax.set_xlim(-limit, limit)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)


def _legend(fig, styles: list[Style]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=s.color, hatch=s.hatch, edgecolor="white", label=s.label) for s in styles]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 4),
        fontsize=7,
        frameon=False,
        bbox_to_anchor=(0.5, -0.01),
    )


def delta_figure(results: EvalResults, mean: str):
    """Quantized minus baseline of each OOD metric (panels) for each score (rows), on one group's mean."""
    quantized = _quantized(results)
    scores = [s for s in results.score_names if any(results.delta(m.label, mean, s, "auroc") for m in quantized)]
    if not quantized or not scores:
        return None
    styles = model_styles(results)
    plt = _plt()
    height = 1.3 + 0.28 * len(scores) * len(quantized)
    metrics = delta_metrics(results)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), height), sharey=True)
    for ax, metric in zip(axes, metrics, strict=True):
        bars = []
        for row, score in enumerate(scores):
            for m in quantized:
                d = results.delta(m.label, mean, score, metric)
                bars.append((row, None if d is None else 100 * d.abs, styles[m.label]))
        info = METRICS[metric]
        _delta_panel(ax, scores, bars, len(quantized), f"Δ {info.title} (points)")
        ax.set_title(f"{info.title} ({info.better} is better)", fontsize=9)
    members = [d.name for d in results.datasets if d.role == "ood" and _in_mean(results, d.name, mean)]
    fig.suptitle(f"Quantized minus baseline, {mean_title(mean)} mean ({', '.join(members)})", fontsize=10, y=1.0)
    _legend(fig, [styles[m.label] for m in quantized])
    fig.tight_layout(rect=(0, 0.07 if height < 4 else 0.04, 1, 0.97))
    return fig


def _in_mean(results: EvalResults, name: str, mean: str) -> bool:
    from vitqbench.results import mean_members

    return name in mean_members(results.datasets).get(mean, [])


def id_delta_figure(results: EvalResults):
    """Quantized minus baseline of top-1, top-5 and ECE on the ID set, one row per quantized model."""
    quantized = [m for m in _quantized(results) if results.id_metric(m.label) and results.id_metric(m.baseline)]
    if not quantized:
        return None
    styles = model_styles(results)
    metrics = [
        k
        for k in ("top1", "top5", "ece")
        if any(results.delta(m.label, results.id_dataset, None, k) for m in quantized)
    ]
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.3 * len(metrics), 1.2 + 0.35 * len(quantized)), sharey=True, squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        bars = []
        for row, m in enumerate(quantized):
            d = results.delta(m.label, results.id_dataset, None, metric)
            bars.append((row, None if d is None else 100 * d.abs, styles[m.label]))
        info = METRICS[metric]
        _delta_panel(ax, [styles[m.label].label for m in quantized], bars, 1, f"Δ {info.title} (points)")
        ax.set_title(f"{info.title} ({info.better} is better)", fontsize=9)
    fig.suptitle(f"ID set {results.id_dataset}: quantized minus baseline", fontsize=10)
    fig.tight_layout()
    return fig


def roc_figure(results: EvalResults, score: str):
    """One panel per OOD set, every model's ROC curve (ID positive) with its AUROC in the legend."""
    id_name = results.id_dataset
    sets = [(n, g) for n, g in ordered_ood_sets(results) if _has_pair(results, score, n)]
    if not sets:
        return None
    styles = model_styles(results)
    plt = _plt()
    cols = min(len(sets), 4)
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols, 3.5 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, (name, group) in zip(axes.flat, sets, strict=False):
        for m in results.models:
            id_s = results.samples.get((m.label, id_name), {}).get(score)
            ood_s = results.samples.get((m.label, name), {}).get(score)
            if id_s is None or ood_s is None:
                continue
            curve = roc_curve(id_s, ood_s)
            r = results.ood_metric(m.label, name, score)
            style = styles[m.label]
            label = f"{style.label}: {100 * r.auroc:.1f}" if r else style.label
            ax.plot(curve.fpr, curve.tpr, color=style.color, linestyle=style.linestyle, linewidth=1.3, label=label)
        ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.7, linestyle="-")
        ax.set_title(f"{name} ({group or 'ungrouped'})", fontsize=9)
        ax.legend(fontsize=6, loc="lower right", title="AUROC %", title_fontsize=6)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(color="#eeeeee", linewidth=0.6)
    for ax in axes[-1]:
        ax.set_xlabel("FPR: OOD accepted as ID", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("TPR: ID accepted", fontsize=8)
    for ax in list(axes.flat)[len(sets) :]:
        ax.set_visible(False)
    fig.suptitle(f"ROC curves, score {score}, ID set {id_name}", fontsize=10)
    fig.tight_layout()
    return fig


def _has_pair(results: EvalResults, score: str, ood: str) -> bool:
    return any(
        score in results.samples.get((m.label, ood), {})
        and score in results.samples.get((m.label, results.id_dataset), {})
        for m in results.models
    )


def histogram_figure(results: EvalResults, score: str):
    """Score distributions, ID vs each OOD set: a row per family, a column per precision, shared axes."""
    id_name = results.id_dataset
    groups = [
        [m for m in members if score in results.samples.get((m.label, id_name), {})]
        for members in families(results).values()
    ]
    groups = [g for g in groups if g]
    if not groups:
        return None
    sets = [id_name] + [n for n, _ in ordered_ood_sets(results)]
    colors = {id_name: "#555555", **{n: _SET_COLORS[i % len(_SET_COLORS)] for i, n in enumerate(sets[1:])}}
    arrays = {
        (m.label, n): results.samples[(m.label, n)][score]
        for g in groups
        for m in g
        for n in sets
        if score in results.samples.get((m.label, n), {})
    }
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()])
    if finite.size == 0:
        bins = np.linspace(-1, 1, 41)
    else:  # percentiles: one extreme sample must not squeeze every distribution into one bin
        lo, hi = np.percentile(finite, [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
    plt = _plt()
    cols = max(len(g) for g in groups)
    fig, axes = plt.subplots(
        len(groups), cols, figsize=(3.4 * cols, 2.6 * len(groups)), sharex=True, sharey=True, squeeze=False
    )
    styles = model_styles(results)
    for row, members in enumerate(groups):
        for col in range(cols):
            ax = axes[row][col]
            if col >= len(members):
                ax.set_visible(False)
                continue
            m = members[col]
            bad = 0
            for n in sets:
                a = arrays.get((m.label, n))
                if a is None:
                    continue
                bad += int((~np.isfinite(a)).sum())
                kw = (
                    {"histtype": "stepfilled", "alpha": 0.35}
                    if n == id_name
                    else {"histtype": "step", "linewidth": 1.2}
                )
                ax.hist(
                    np.clip(a[np.isfinite(a)], bins[0], bins[-1]),
                    bins=bins,
                    density=True,
                    color=colors[n],
                    label=f"{n} (ID)" if n == id_name else n,
                    **kw,
                )
            title = styles[m.label].label + (f"\n{bad} non-finite scores not drawn" if bad else "")
            ax.set_title(title, fontsize=8)
            ax.grid(color="#eeeeee", linewidth=0.6)
        axes[row][0].set_ylabel("density", fontsize=8)
    for col in range(cols):
        axes[-1][col].set_xlabel(f"{score} score (higher = more ID)", fontsize=8)
    handles, labels = next(ax for ax in axes.flat if ax.get_visible()).get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7, frameon=False, bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(
        f"Score {score}: ID vs OOD sets (values clipped to the 0.5-99.5 percentile range)",
        fontsize=10,
        x=0.02,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0, 0.86, 0.97))
    return fig


def _attention_sets(results: EvalResults) -> list[tuple[str, str]]:
    """(dataset, colour) of the sets with attention rows: ID first (grey), then the OOD sets in report order."""
    have = {r.dataset for r in results.attention}
    sets = [results.id_dataset] + [n for n, _ in ordered_ood_sets(results)]
    sets = [n for n in sets if n in have]
    return [
        (n, "#555555" if n == results.id_dataset else _SET_COLORS[i % len(_SET_COLORS)]) for i, n in enumerate(sets)
    ]


def _block_panels(results: EvalResults, models: list[ModelInfo], field: str, ylabel: str, title: str):
    """One panel per model: ``field`` of its attention rows per block, a line per dataset (ID vs each OOD set)."""
    sets = _attention_sets(results)
    rows = {(r.model, r.dataset, r.block): getattr(r, field) for r in results.attention}
    models = [m for m in models if any(rows.get((m.label, n, 0)) is not None for n, _ in sets)]
    if not models or not sets:
        return None
    plt = _plt()
    cols = min(len(models), 4)
    nrows = -(-len(models) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), sharey=True, squeeze=False)
    for ax, m in zip(axes.flat, models, strict=False):
        for name, color in sets:
            blocks = sorted(b for (mm, n, b) in rows if mm == m.label and n == name and rows[(mm, n, b)] is not None)
            if not blocks:
                continue
            style = "-" if name == results.id_dataset else "--"
            label = f"{name} (ID)" if name == results.id_dataset else name
            values = [rows[(m.label, name, b)] for b in blocks]
            ax.plot(blocks, values, color=color, linestyle=style, marker="o", markersize=3, linewidth=1.3, label=label)
        ax.set_title(model_label(m), fontsize=8)
        ax.set_xlabel("block", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.tick_params(labelsize=7)
        ax.grid(color="#eeeeee", linewidth=0.6)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7, frameon=False, bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 0.85, 0.95))
    return fig


def attention_entropy_figure(results: EvalResults):
    """Mean attention entropy per block, ID vs each OOD set, one panel per model (precision)."""
    return _block_panels(
        results, results.models, "entropy", "attention entropy (nats)", "Attention entropy per block, ID vs OOD sets"
    )


def attention_drift_figure(results: EvalResults):
    """Jensen-Shannon drift of the class token's attention from the baseline, per block, per quantized model."""
    return _block_panels(
        results,
        _quantized(results),
        "drift_js",
        "JS divergence (bits)",
        "Class-token attention drift from the baseline per block, ID vs OOD sets",
    )


def rollout_figure(results: EvalResults, members: list[ModelInfo]):
    """The fixed images (rows) with each model's class-token rollout over them (columns, baseline first)."""
    maps = {(a.model, a.dataset, a.index): a for a in results.attention_maps}
    labels = [m.label for m in members if any(k[0] == m.label for k in maps)]
    images = list(dict.fromkeys((d, i) for (m, d, i) in maps if m in labels))
    if not labels or not images:
        return None
    roles = {(a.dataset, a.index): a.role for a in results.attention_maps}
    styles = model_styles(results)
    plt = _plt()
    cols = len(labels) + 1  # the image alone, then each model's rollout over it
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 1.9 * len(images) + 0.4), squeeze=False)
    for row, (dataset, index) in enumerate(images):
        image = results.attention_images.get((dataset, index))
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
        if image is not None:
            _show_image(axes[row][0], image, image.shape[:2])
        else:
            axes[row][0].set_visible(False)
        role = "ID" if roles[(dataset, index)] == "id" else "OOD"
        axes[row][0].set_ylabel(f"{dataset} ({role})\n#{index}", fontsize=7)
        for col, label in enumerate(labels, start=1):
            ax = axes[row][col]
            a = maps.get((label, dataset, index))
            if a is None:
                ax.set_visible(False)
                continue
            size = image.shape[:2] if image is not None else a.grid
            if image is not None:
                _show_image(ax, image, size)
            ax.imshow(np.asarray(a.rollout).reshape(a.grid), cmap="inferno", alpha=0.6 if image is not None else 1.0,
                      extent=(0, size[1], size[0], 0), interpolation="nearest")  # fmt: skip
    axes[0][0].set_title("image", fontsize=7)
    for col, label in enumerate(labels, start=1):
        axes[0][col].set_title(styles[label].label.replace(" (", "\n("), fontsize=7)
    fig.suptitle("Class-token attention rollout over the patches (brighter = more attention)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (1.9 * len(images) + 0.4)))
    return fig


def _show_image(ax, image: np.ndarray, size: tuple[int, int]) -> None:
    gray = image.shape[-1] == 1
    ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, extent=(0, size[1], size[0], 0))
