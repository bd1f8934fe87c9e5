"""The report as a reader meets it: summaries by OOD group, plots that carry the models' own labels and
the reported numbers, escaped names, unique file names, and an HTML page that renders in Chromium."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from vitqbench.ood import mean_metrics, ood_metrics, roc_curve
from vitqbench.report import write_report
from vitqbench.report.markdown import format_delta, render_html, render_report
from vitqbench.report.plots import delta_figure, histogram_figure, roc_figure
from vitqbench.results import (
    DatasetInfo,
    EvalResults,
    IdMetrics,
    ModelInfo,
    OodResult,
    compute_deltas,
    mean_members,
)

HOSTILE = "<img src=x onerror=alert(1)>"
SETS = {"near1": ("near", 1.0), "far1": ("far", 2.5), "noise": ("synthetic", 4.0)}


def _model(label, precision, baseline, timm="vit_small_patch16_224", **quant) -> ModelInfo:
    meta = {"source": {"kind": "pretrained", "tag": "augreg_in1k"}, "quantization": quant or None}
    return ModelInfo(label, f"{label}.onnx", label.ljust(64, "0"), 2**20, precision, timm, baseline, meta)


def make_results(models: list[ModelInfo] | None = None, broken: str | None = None) -> EvalResults:
    """Two families at fp32 and int8, near/far/synthetic sets; ``broken``'s scores are partly NaN."""
    models = models or [
        _model("a.fp32", "fp32", "a.fp32"),
        _model("a.int8", "int8", "a.fp32", scheme="w8a8", execution="integer-kernels"),
        _model("b.fp32", "fp32", "b.fp32", timm="deit_small_patch16_224"),
        _model("b.int8", "int8", "b.fp32", timm="deit_small_patch16_224"),
    ]
    rng = np.random.default_rng(0)
    datasets = [DatasetInfo("val", "id", "digits:test", "k", 60, 10, False)]
    datasets += [
        DatasetInfo(name, "ood", name, f"k{name}", 50, None, group == "synthetic", group=group)
        for name, (group, _) in SETS.items()
    ]
    samples, oods, ids = {}, [], []
    for i, m in enumerate(models):
        id_s = rng.normal(2.0 + 0.3 * i, 1.0, 60)
        if m.label == broken:
            id_s[:7] = np.nan
        samples[(m.label, "val")] = {"msp": id_s, "energy": 2 * id_s}
        ids.append(IdMetrics(m.label, "val", 60, 0.9 - 0.01 * i, 0.99, 0.05))
        for name, (_, shift) in SETS.items():
            ood_s = rng.normal(2.0 - shift, 1.0, 50)
            samples[(m.label, name)] = {"msp": ood_s, "energy": 2 * ood_s}
    for m in models:
        for score in ("msp", "energy"):
            rows = {}
            for name in SETS:
                r = ood_metrics(samples[(m.label, "val")][score], samples[(m.label, name)][score])
                rows[name] = OodResult(model=m.label, dataset=name, score=score, **r.to_dict())
            oods += rows.values()
            for mean, members in mean_members(datasets).items():
                group = mean_metrics([rows[n] for n in members])
                oods.append(OodResult(model=m.label, dataset=mean, score=score, **group.to_dict()))
    return EvalResults(
        models=models,
        datasets=datasets,
        scores=[{"name": "msp"}, {"name": "energy"}],
        id_metrics=ids,
        ood_metrics=oods,
        deltas=compute_deltas(models, ids, oods),
        failures=[],
        settings={
            "id": "digits:test",
            "fit": None,
            "provider": "cpu",
            "threads": 2,
            "batch_size": 8,
            "session_policy": "one session",
            "seed": 0,
        },  # fmt: skip
        versions={"numpy": np.__version__},
        cache={"dir": "/tmp/c", "hits": 0, "computed": 8, "samples_computed": 880, "cells": {}},
        samples=samples,
    )


def test_summary_tables_give_near_and_far_means_of_every_score_with_deltas():
    results = make_results()
    assert results.headline_means == ["mean:near", "mean:far"]
    report = render_report(results)
    near = report.split("## Summary: near-OOD mean (near1)")[1].split("##")[0]
    assert "## Summary: far-OOD mean (far1)" in report and "Summary: synthetic" not in report
    r = results.ood_metric("a.int8", "mean:near", "energy")
    d = results.delta("a.int8", "mean:near", "energy", results.headline_fpr)
    row = next(line for line in near.splitlines() if line.startswith("| energy | a.int8 |"))
    assert f"{100 * r.auroc:.2f}" in row and f"{100 * r.aupr_in:.2f}" in row and format_delta(d) in row
    assert "AUPR-in (%)" in near


def test_relative_deltas_only_where_the_baseline_is_far_from_zero():
    results = make_results()
    low = next(d for d in results.deltas if d.metric == "fpr95_id_positive" and abs(d.baseline_value) < 0.5 and d.rel)
    high = next(d for d in results.deltas if d.metric == "auroc" and d.baseline_value >= 0.5)
    assert "%" not in format_delta(low) and re.fullmatch(r"[+-]\d+\.\d\d", format_delta(low))
    assert format_delta(high).endswith("%")


def test_roc_plots_draw_the_projects_own_curve_with_nonfinite_scores_most_ood():
    results = make_results(broken="a.int8")
    fig = roc_figure(results, "msp")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["near1 (near)", "far1 (far)", "noise (synthetic)"]
    ax = fig.axes[0]
    lines = {line.get_label().split(":")[0]: line for line in ax.lines if not line.get_label().startswith("_")}
    for m in results.models:
        curve = roc_curve(results.samples[(m.label, "val")]["msp"], results.samples[(m.label, "near1")]["msp"])
        label = m.label + (" (w8a8, integer-kernels)" if m.label == "a.int8" else "")
        np.testing.assert_array_equal(lines[label].get_xdata(), curve.fpr)
        np.testing.assert_array_equal(lines[label].get_ydata(), curve.tpr)
        # The area under the plotted points is the AUROC the tables report (NaN scores included).
        assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(results.ood_metric(m.label, "near1", "msp").auroc)
    assert lines["a.int8 (w8a8, integer-kernels)"].get_ydata()[-2] < 1.0  # the 7 NaN ID scores come last
    # Colour is the family, line style the precision: two families never draw alike.
    a8, b8 = lines["a.int8 (w8a8, integer-kernels)"], lines["b.int8"]
    assert a8.get_color() != b8.get_color() and a8.get_linestyle() == b8.get_linestyle()
    assert lines["a.fp32"].get_linestyle() != a8.get_linestyle()


def test_delta_plots_label_values_around_a_zero_line_per_score_and_group():
    results = make_results()
    fig = delta_figure(results, "mean:far")
    panels = [ax for ax in fig.axes if ax.get_title()]
    titles = ["AUROC (higher", "AUPR-in (higher", "AUPR-out (higher", "FPR@95 (OpenOOD v1.5, OOD+) (lower"]
    assert [ax.get_title() for ax in panels] == [f"{t} is better)" for t in titles]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["msp", "energy"]
    d = results.delta("b.int8", "mean:far", "energy", "auroc")
    assert f"{100 * d.abs:+.2f}" in [t.get_text() for t in panels[0].texts]
    assert any(list(line.get_xdata()) == [0, 0] for line in panels[0].lines)  # the zero line
    lo, hi = panels[0].get_xlim()
    assert hi < 50 and lo == -hi  # scaled to the deltas, not to 0-100
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["a.int8 (w8a8, integer-kernels)", "b.int8"]


def test_histograms_share_axes_and_label_them():
    fig = histogram_figure(make_results(), "energy")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4 and len({ax.get_ylim() for ax in axes}) == 1 and len({ax.get_xlim() for ax in axes}) == 1
    assert {ax.get_ylabel() for ax in axes} >= {"density"} and "energy score (higher = more ID)" in {
        ax.get_xlabel() for ax in axes
    }
    assert [ax.get_title() for ax in axes] == ["a.fp32", "a.int8 (w8a8, integer-kernels)", "b.fp32", "b.int8"]


def test_plot_scores_chooses_which_scores_get_roc_and_histograms(tmp_path):
    written = write_report(make_results(), tmp_path / "out", plot_scores=["energy"])
    names = {p.name for p in written if p.suffix == ".png"}
    assert names == {"delta_id.png", "delta_mean_near.png", "delta_mean_far.png", "roc_energy.png", "hist_energy.png"}


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_names_from_metadata_labels_and_ood_sets_are_escaped_everywhere():
    models = [
        _model(HOSTILE, "fp32", HOSTILE, timm="## INJECTED"),
        _model("q|int8", "int8", HOSTILE, timm="a|b"),
    ]
    models[0].metadata["source"] = {"kind": "checkpoint", "path": "/x/## INJECTED|<b>.pth"}
    results = make_results(models)
    results.datasets[1].name = "near|<script>alert(1)</script>"
    results.warnings = ["## INJECTED warning"]
    report = render_report(results)
    assert "<img" not in report and "<script" not in report and "<b>" not in report
    assert not [line for line in report.splitlines() if line.startswith("## INJECTED") or line.startswith("# ")][1:]
    tables: list[list[int]] = [[]]
    for line in report.splitlines():  # every row of a table has as many cells as its header
        if line.startswith("|"):
            tables[-1].append(len(re.split(r"(?<!\\)\|", line)))
        elif tables[-1]:
            tables.append([])
    assert len(tables) > 8 and all(len(set(t)) <= 1 for t in tables), tables
    assert "q\\|int8" in report and "a\\|b" in report
    page = _Tags()
    page.feed(render_html(results))
    assert not [t for t, a in page.tags if t == "script"]
    assert not [a for t, a in page.tags if any(k.startswith("on") for k in a)]
    assert all(a.get("src", "").startswith("data:image/png;base64,") for t, a in page.tags if t == "img")


def test_ood_names_that_slug_alike_get_their_own_output_files(run_cli, tiny_onnx, tmp_path):
    result = run_cli(
        "eval", "-m", tiny_onnx, "--id", "digits:test:n=20", "--ood", "a b=photos", "--ood", "a_b=noise:gaussian:n=9",
        "--scores", "msp", "--save-outputs", "--no-progress", "--cache-dir", tmp_path / "c", "--out", tmp_path / "o",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    sizes = sorted(len(np.load(p)["labels"]) for p in (tmp_path / "o" / "outputs").glob("*.npz"))
    assert sizes == [9, 20, 120]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => i.complete && i.naturalWidth > 0);
  document.body.setAttribute('data-check', JSON.stringify({imgs, tables: document.querySelectorAll('table').length}));
});
</script>"""


@pytest.mark.skipif(_chromium() is None, reason="Chromium not installed (Debian: apt-get install chromium)")
def test_html_report_renders_in_headless_chromium_with_images_and_tables(tmp_path):
    out = tmp_path / "out"
    write_report(make_results(), out)
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    # A copy allowed to run one inline script reports what the browser loaded.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'")
                     .replace("</body>", CHECK + "</body>"))  # fmt: skip
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*args, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"data-check=\"([^\"]*)\"", dom)
    assert found, dom[-2000:]
    check = json.loads(found.group(1).replace("&quot;", '"'))
    n_plots = len(list((out / "plots").glob("*.png")))
    assert check["imgs"] == [True] * n_plots and n_plots >= 5
    assert check["tables"] >= 8
    # The page itself, under its own strict policy: the screenshot shows the plots' colours.
    shot = tmp_path / "shot.png"
    subprocess.run([*args, "--window-size=1200,5000", f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, cwd=tmp_path)  # fmt: skip
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 80
    assert saturated.mean() > 0.002  # tables are grey; coloured pixels come from the embedded plots


def test_models_trained_with_different_augmentation_get_an_augment_column_and_side_by_side_deltas():
    models = [
        _model("a.fp32", "fp32", "a.fp32"),
        _model("a.int8", "w8a8", "a.fp32", scheme="w8a8", execution="integer-kernels"),
        _model("b.fp32", "fp32", "b.fp32"),
        _model("b.int8", "w8a8", "b.fp32", scheme="w8a8", execution="integer-kernels"),
    ]
    for m, augment in zip(models, ("none", "none", "randaugment", "randaugment"), strict=True):
        m.metadata["source"] = {"kind": "checkpoint", "train": {"augment": augment}}
    results = make_results(models)
    report = render_report(results)
    section = report.split("## Quantization deltas by training augmentation")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| w8a8 (integer-kernels) |"))
    for label in ("a.int8", "b.int8"):
        assert format_delta(results.delta(label, "val", None, "top1")) in row
    assert "Δ top-1 none" in section and "Δ top-1 randaugment" in section
    energy = next(line for line in section.splitlines() if line.startswith("| energy | w8a8 (integer-kernels) |"))
    assert format_delta(results.delta("b.int8", "mean:near", "energy", "auroc")) in energy
    assert "| energy | b.int8 | randaugment | w8a8 |" in report  # the summary's augment column
    assert "## Quantization deltas by training augmentation" not in render_report(make_results())  # one augment: none
