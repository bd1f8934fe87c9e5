"""Report files from a hand-made EvalResults: no model runs, so every number is known in advance."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from vitqbench.report import write_report
from vitqbench.results import (
    DatasetInfo,
    EvalResults,
    Failure,
    IdMetrics,
    ModelInfo,
    OodResult,
    compute_deltas,
)


def make_results(tmp_path) -> EvalResults:
    rng = np.random.default_rng(0)
    models = [
        ModelInfo("m.fp32", "m.fp32.onnx", "a" * 64, 4_000_000, "fp32", "vit_s", "m.fp32", {}),
        ModelInfo("m.int4", "m.int4.onnx", "b" * 64, 1_000_000, "int4", "vit_s", "m.fp32", {}),
    ]
    datasets = [
        DatasetInfo("id", "id", "digits:test", "k1", 50, 10, False),
        DatasetInfo("far", "ood", "noise:gaussian", "k2", 40, None, True, [("x.png", "truncated")]),
    ]
    ids = [IdMetrics("m.fp32", "id", 50, 0.8, 0.95, 0.05), IdMetrics("m.int4", "id", 50, 0.6, 0.9, float("nan"))]
    oods = [
        OodResult(
            model=m,
            dataset=d,
            score="msp",
            n_id=50,
            n_ood=40,
            auroc=auroc,
            aupr_in=0.7,
            aupr_out=0.6,
            fpr95_id_positive=0.3,
            fpr95_ood_positive=0.4,
        )
        for m, auroc in (("m.fp32", 0.9), ("m.int4", 0.72))
        for d in ("far", "mean")
    ]
    samples = {
        (m.label, d): {
            "labels": np.zeros(n, np.int64),
            "predictions": np.zeros(n, np.int64),
            "paths": np.asarray(["p"] * n),
            "msp": rng.normal(shift, 1, n),
        }
        for m in models
        for d, n, shift in (("id", 50, 1.0), ("far", 40, 0.0))
    }
    return EvalResults(
        models=models,
        datasets=datasets,
        scores=[{"name": "msp"}],
        id_metrics=ids,
        ood_metrics=oods,
        deltas=compute_deltas(models, ids, oods),
        failures=[Failure("m.int4", "far", "inference", "boom")],
        settings={
            "id": "digits:test",
            "fit": None,
            "provider": "cpu",
            "threads": None,
            "batch_size": 8,
            "session_policy": "one session",
            "seed": 0,
        },
        versions={"numpy": np.__version__},
        cache={"dir": str(tmp_path), "hits": 1, "computed": 3, "samples_computed": 90, "cells": {}},
        samples=samples,
    )


def test_report_json_csv_and_plots(tmp_path):
    results = make_results(tmp_path)
    written = write_report(results, tmp_path / "out")
    out = tmp_path / "out"
    assert {p.name for p in written} >= {"results.json", "results.csv", "report.md", "report.html", "delta_id.png"}
    doc = json.loads((out / "results.json").read_text())  # strict JSON: NaN became null
    assert doc["id_metrics"][1]["ece"] is None and doc["datasets"][1]["skipped"] == [["x.png", "truncated"]]
    assert "samples" not in doc
    rows = list(csv.DictReader(open(out / "results.csv")))
    int4_far = next(r for r in rows if r["model"] == "m.int4" and r["dataset"] == "far")
    assert float(int4_far["delta_auroc"]) == 0.72 - 0.9
    assert float(int4_far["delta_auroc_rel"]) == (0.72 - 0.9) / 0.9
    report = (out / "report.md").read_text()
    assert "| m.int4 | int4 | 60.00 | -20.00, -25.0% |" in report
    assert "72.00 (-18.00, -20.0%)" in report  # AUROC on far, with delta
    assert "\\[m.int4 x far\\] inference: boom" in report and "| far | ood | – | noise:gaussian | 40 |" in report
    for name in ("delta_mean.png", "roc_msp.png", "hist_msp.png"):
        assert (out / "plots" / name).stat().st_size > 2000


def test_report_names_the_weights_and_flags_random_init(tmp_path):
    from vitqbench.report.markdown import render_report

    results = make_results(tmp_path)
    results.models[0].metadata = {"source": {"kind": "checkpoint", "path": "/x/digits.safetensors"}}
    results.models[1].metadata = {"source": {"kind": "random", "seed": 3}}
    report = render_report(results)
    assert "checkpoint digits.safetensors" in report and "random (seed 3)" in report
    assert "**Random-init weights** (m.int4)" in report
    results.models[1].metadata = {"source": {"kind": "pretrained", "tag": "fb_in1k"}}
    report = render_report(results)
    assert "pretrained fb_in1k" in report and "Random-init" not in report


@pytest.mark.parametrize(
    ("convention", "shown", "other"),
    [
        (None, "FPR@95 (OpenOOD v1.5, OOD+) (%)", "fpr95_id_positive"),  # OpenOOD v1.5's leaderboard by default
        ("id-positive", "FPR@95TPR (ID+) (%)", "fpr95_ood_positive"),
    ],
)
def test_both_fprs_are_named_and_the_convention_picks_the_tables_one(tmp_path, convention, shown, other):
    from vitqbench.report.markdown import render_report
    from vitqbench.report.tables import CSV_COLUMNS

    results = make_results(tmp_path)
    if convention:
        results.settings["fpr_convention"] = convention
    report = render_report(results)
    assert f"### {shown} per OOD set (lower is better)" in report and report.count("per OOD set (lower is better)") == 1
    assert f"as {other}" in report.replace("\\_", "_")
    assert {"fpr95_id_positive", "fpr95_ood_positive"} <= set(CSV_COLUMNS) and "fpr95" not in CSV_COLUMNS
