"""End to end: `vitqbench eval` on a tiny random-init ViT at three precisions and built-in data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate import EvalConfig, run_eval
from vitqbench.ood import ood_metrics, topk_accuracy

SCORES = "msp,energy,mahalanobis,vim"
ID, FIT = "digits:test", "digits:train:n=400"
OOD = {"photos": "photos", "noise": "noise:gaussian:n=100"}


@pytest.fixture(scope="module")
def models(tiny_onnx, tmp_path_factory) -> list[Path]:
    """fp32, int8 and int4 versions of the tiny model."""
    from vitqbench.quant import CalibConfig, quantize_model

    folder = tmp_path_factory.mktemp("eval-models")
    fp32 = folder / "tiny.fp32.onnx"
    fp32.write_bytes(tiny_onnx.read_bytes())
    int8, int4 = folder / "tiny.int8.onnx", folder / "tiny.int4.onnx"
    quantize_model(fp32, int8, "w8a8", calib=CalibConfig("digits:train", size=32), progress=False)
    quantize_model(fp32, int4, "w4", progress=False)
    return [fp32, int8, int4]


def eval_args(models: list[Path], out: Path, cache: Path, *extra: str) -> list[str]:
    args = ["eval", "--id", ID, "--fit", FIT, "--scores", SCORES, "--out", out, "--cache-dir", cache]
    args += ["--no-progress", "--batch-size", "64"]
    for path in models:
        args += ["--model", path]
    for name, spec in OOD.items():
        args += ["--ood", f"{name}={spec}"]
    return [*args, *extra]


@pytest.fixture(scope="module")
def first_run(models, tmp_path_factory):
    """One full eval through the CLI with --save-outputs, on a fresh cache."""
    from vitqbench.cli import main

    root = tmp_path_factory.mktemp("eval-run")
    out, cache = root / "out", root / "cache"
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in eval_args(models, out, cache, "--save-outputs")])
    assert done.value.code in (0, None)
    return out, cache


def load(out: Path) -> tuple[dict, list[dict]]:
    doc = json.loads((out / "results.json").read_text())
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return doc, rows


def test_json_csv_and_saved_outputs_agree(first_run, models):
    out, _ = first_run
    doc, rows = load(out)
    assert [m["precision"] for m in doc["models"]] == ["fp32", "w8a8", "w4"]
    assert [m["execution"] for m in doc["models"]] == [None, "integer-kernels", "integer-kernels"]
    assert not doc["failures"]
    sizes = {d["name"]: d["size"] for d in doc["datasets"]}
    assert sizes == {ID: 360, "fit": 400, "photos": 120, "noise": 100}
    assert doc["versions"]["onnxruntime"] and doc["settings"]["seed"] == 0
    assert "dim" in {s["name"]: s["params"] for s in doc["scores"]}["vim"]  # defaults are recorded too
    labels = [m["label"] for m in doc["models"]]
    scores = SCORES.split(",")
    # One csv row per model x dataset x score (the ID set: one per model), each equal to the json.
    # Means: over the real sets (photos) and over the synthetic group (noise, never in a headline mean).
    assert len(rows) == len(labels) * (1 + (len(OOD) + 2) * len(scores))
    by_key = {(r["model"], r["dataset"], r["score"]): r for r in rows}
    for m in doc["ood_metrics"]:
        row = by_key[(m["model"], m["dataset"], m["score"])]
        for metric in ("auroc", "aupr_in", "aupr_out", "fpr95_id_positive", "fpr95_ood_positive"):
            assert float(row[metric]) == m[metric]
    for m in doc["id_metrics"]:
        row = by_key[(m["model"], ID, "")]
        assert float(row["top1"]) == m["top1"] and float(row["ece"]) == m["ece"]

    # Any number can be recomputed from the saved per-sample outputs.
    for label in labels:
        id_npz = np.load(out / "outputs" / f"{label}__digits_test.npz")
        assert id_npz["logits"].shape == (360, 10) and id_npz["features"].shape == (360, 64)
        top1 = topk_accuracy(id_npz["logits"], id_npz["labels"], 1)
        assert top1 == pytest.approx(float(by_key[(label, ID, "")]["top1"]), abs=1e-12)
        np.testing.assert_array_equal(id_npz["predictions"], id_npz["logits"].argmax(1))
        for name in OOD:
            ood_npz = np.load(out / "outputs" / f"{label}__{name}.npz")
            for score in scores:
                m = ood_metrics(id_npz[f"score_{score}"], ood_npz[f"score_{score}"])
                assert m.auroc == pytest.approx(float(by_key[(label, name, score)]["auroc"]), abs=1e-12)
                row = by_key[(label, name, score)]
                assert m.fpr95_id_positive == pytest.approx(float(row["fpr95_id_positive"]), abs=1e-12)
                assert m.fpr95_ood_positive == pytest.approx(float(row["fpr95_ood_positive"]), abs=1e-12)
        fit_npz = np.load(out / "outputs" / f"{label}__fit.npz")  # what fitted scores are refitted from
        assert fit_npz["features"].shape == (400, 64) and len(fit_npz["labels"]) == 400
        for mean, members in (("mean", ["photos"]), ("mean:synthetic", ["noise"])):
            per_set = [float(by_key[(label, name, "energy")]["aupr_out"]) for name in members]
            assert float(by_key[(label, mean, "energy")]["aupr_out"]) == pytest.approx(np.mean(per_set))
        assert by_key[(label, "noise", "energy")]["group"] == "synthetic"


def test_deltas_are_relative_to_the_baseline(first_run):
    out, _ = first_run
    doc, rows = load(out)
    base = doc["models"][0]["label"]
    assert all(m["baseline"] == base for m in doc["models"])
    ood = {(m["model"], m["dataset"], m["score"]): m for m in doc["ood_metrics"]}
    ids = {m["model"]: m for m in doc["id_metrics"]}
    assert doc["deltas"] and {d["model"] for d in doc["deltas"]} == {m["label"] for m in doc["models"][1:]}
    for d in doc["deltas"]:
        own = ids[d["model"]] if d["score"] is None else ood[(d["model"], d["dataset"], d["score"])]
        ref = ids[base] if d["score"] is None else ood[(base, d["dataset"], d["score"])]
        assert d["value"] == own[d["metric"]] and d["baseline_value"] == ref[d["metric"]]
        assert d["abs"] == pytest.approx(own[d["metric"]] - ref[d["metric"]])
        if ref[d["metric"]]:
            assert d["rel"] == pytest.approx((own[d["metric"]] - ref[d["metric"]]) / abs(ref[d["metric"]]))
    csv_row = next(r for r in rows if r["model"] != base and r["score"] == "msp" and r["dataset"] == "photos")
    delta = next(
        d
        for d in doc["deltas"]
        if (d["model"], d["dataset"], d["score"], d["metric"]) == (csv_row["model"], "photos", "msp", "auroc")
    )
    assert float(csv_row["delta_auroc"]) == delta["abs"]
    assert all(r["delta_auroc"] == "" for r in rows if r["model"] == base)


def test_rerun_runs_no_model_and_new_ood_set_runs_only_that(first_run, models, tmp_path, monkeypatch, run_cli):
    import vitqbench.runtime

    out, cache = first_run
    sessions = []
    real = vitqbench.runtime.create_session
    monkeypatch.setattr(vitqbench.runtime, "create_session", lambda *a, **k: sessions.append(a) or real(*a, **k))
    stale = tmp_path / "again" / "plots" / "roc_an_old_set_msp.png"  # from an earlier run into this folder
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    result = run_cli(*eval_args(models, tmp_path / "again", cache))
    assert result.code == 0, result.stderr
    assert not stale.exists() and (tmp_path / "again" / "plots" / "delta_mean.png").is_file()
    doc, _ = load(tmp_path / "again")
    assert sessions == [] and doc["cache"]["computed"] == 0 and doc["cache"]["samples_computed"] == 0
    assert doc["ood_metrics"] == load(out)[0]["ood_metrics"]

    more = EvalConfig(
        models=models,
        id=ID,
        fit=FIT,
        ood={**OOD, "uniform": "noise:uniform:n=50"},
        scores=SCORES,
        cache_dir=cache,
        progress=False,
    )
    results = run_eval(more)
    assert len(sessions) == len(models)  # one session per model, for the new set only
    assert results.cache["computed"] == len(models) and results.cache["samples_computed"] == 50 * len(models)


def test_interrupted_run_resumes_from_finished_shards(first_run, models, tmp_path, monkeypatch):
    import vitqbench.evaluate.inference as inference
    import vitqbench.runtime

    monkeypatch.setattr(inference, "SHARD_SAMPLES", 64)
    real = vitqbench.runtime.create_session
    calls = {"n": 0}

    class Flaky:
        def __init__(self, session):
            self.session = session

        def run(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the first cell
            return self.session.run(*args, **kwargs)

    monkeypatch.setattr(vitqbench.runtime, "create_session", lambda *a, **k: Flaky(real(*a, **k)))
    config = EvalConfig(
        models=models[:1],
        id=ID,
        fit=FIT,
        ood=OOD,
        scores=SCORES,
        batch_size=32,
        cache_dir=tmp_path / "c",
        progress=False,
    )
    with pytest.raises(KeyboardInterrupt):
        run_eval(config)
    parts = list((tmp_path / "c" / "outputs").glob("*.parts/*.npz"))
    assert len(parts) == 1  # 3 batches of 32 done: one 64-sample shard written, the rest lost
    results = run_eval(config)
    total = 360 + 400 + sum(int(s.split("=")[-1]) if "=" in s else 120 for s in OOD.values())
    assert results.cache["samples_computed"] == total - 64
    assert not list((tmp_path / "c" / "outputs").glob("*.parts"))
    reference, _ = load(first_run[0])
    label = results.models[0].label
    expected = [m for m in reference["ood_metrics"] if m["model"] == label]
    got = results.to_dict()["ood_metrics"]
    assert [(g["dataset"], g["score"]) for g in got] == [(e["dataset"], e["score"]) for e in expected]
    assert [g["auroc"] for g in got] == pytest.approx([e["auroc"] for e in expected], abs=1e-9)


def test_failing_cells_are_reported_and_the_others_finish(models, tmp_path, run_cli):
    from PIL import Image

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    twelve = tmp_path / "twelve"  # 12 class folders: more classes than the 10-class model has
    for c in range(12):
        (twelve / f"c{c:02d}").mkdir(parents=True)
        Image.new("RGB", (8, 8), (c * 20, 0, 0)).save(twelve / f"c{c:02d}" / "x.png")
    args = [
        "eval",
        "--model",
        models[0],
        "--model",
        broken,
        "--id",
        ID,
        "--scores",
        "msp",
        "--ood",
        "photos=photos",
        "--ood",
        f"gone={tmp_path / 'missing'}",
        "--out",
        tmp_path / "out",
        "--cache-dir",
        tmp_path / "c",
        "--no-progress",
    ]
    result = run_cli(*args)
    assert result.code == 2
    assert "broken" in result.stderr and "gone" in result.stderr and "Traceback" not in result.stderr
    doc, _ = load(tmp_path / "out")
    stages = {(f["model"], f["dataset"], f["stage"]) for f in doc["failures"]}
    assert ("broken", None, "load-model") in stages and (None, "gone", "load-data") in stages
    assert [m["model"] for m in doc["ood_metrics"] if m["dataset"] == "photos"] == ["tiny.fp32"]
    assert (tmp_path / "out" / "report.md").read_text().count("load-data") == 1

    result = run_cli(
        "eval",
        "--model",
        models[0],
        "--id",
        twelve,
        "--scores",
        "msp",
        "--ood",
        "photos=photos",
        "--out",
        tmp_path / "out2",
        "--cache-dir",
        tmp_path / "c",
        "--no-progress",
    )
    assert result.code == 2 and "label" in result.stderr and "10 classes" in result.stderr


def test_report_and_plots_exist(first_run):
    out, _ = first_run
    report = (out / "report.md").read_text()
    headings = ("## Summary: all real OOD mean (photos)", "## ID accuracy", "### AUPR-in (%) per OOD set", "## Models")
    for heading in (*headings, "### AUROC (%) per OOD set", "### FPR@95 (OpenOOD v1.5, OOD+) (%) per OOD set"):
        assert heading in report
    assert (out / "report.html").stat().st_size > 10_000
    assert "tiny.int4" in report and "(reference)" in report
    plots = sorted((out / "plots").glob("*.png"))
    names = {p.name for p in plots}
    scores = SCORES.split(",")  # every score gets ROC curves and histograms by default
    assert names == {"delta_id.png", "delta_mean.png", *(f"{k}_{s}.png" for s in scores for k in ("roc", "hist"))}
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob(".*.npz"))


def test_bench_adds_latency_and_size_to_the_report(first_run, models, tmp_path):
    from vitqbench.report import write_report

    config = EvalConfig(
        models=models[:2],
        id=ID,
        ood={"photos": "photos"},
        scores="msp",
        cache_dir=first_run[1],
        progress=False,
        bench=True,
        bench_options={"iters": 3, "warmup": 1, "rounds": 1},
    )
    results = run_eval(config)
    assert results.cache["computed"] == 0 and not results.failures
    assert [r["model"] for r in results.bench] == ["tiny.fp32", "tiny.int8"]
    assert all(r["p50_ms"] > 0 and r["model_mb"] > 0 for r in results.bench)
    write_report(results, tmp_path)
    assert "## Latency and size" in (tmp_path / "report.md").read_text()


def test_baseline_option_and_bad_provider(first_run, models):
    config = EvalConfig(
        models=models,
        id=ID,
        ood={"photos": "photos"},
        scores="msp",
        cache_dir=first_run[1],
        progress=False,
        baseline=models[1].name,
    )
    from vitqbench.runtime import execution_target

    results = run_eval(config)
    assert results.cache["computed"] == 0
    # The provider as typed (CPU) is normalized: the cells computed for "cpu" are reused.
    assert run_eval(EvalConfig(**{**config.__dict__, "target": execution_target("CPU")})).cache["computed"] == 0
    assert {m.baseline for m in results.models} == {"tiny.int8"}
    assert {d.model for d in results.deltas} == {"tiny.fp32", "tiny.int4"}
    d = results.delta("tiny.fp32", ID, None, "top1")
    assert d.abs == pytest.approx(results.id_metric("tiny.fp32").top1 - results.id_metric("tiny.int8").top1)
    with pytest.raises(VitqbenchError, match="none of the given models"):
        run_eval(EvalConfig(**{**config.__dict__, "baseline": "other.onnx"}))
    with pytest.raises(VitqbenchError, match="unknown provider"):
        run_eval(EvalConfig(**{**config.__dict__, "target": "tpu"}))


def test_no_loadable_model_is_one_line_and_writes_nothing(tmp_path, run_cli):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    result = run_cli("eval", "-m", tmp_path / "nope.onnx", "-m", empty, "--id", "digits:test", "-o", out)
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no such file" in result.stderr and "no graph" in result.stderr
    assert not out.exists()


def test_every_openood_score_runs_in_eval_from_the_cached_outputs(first_run, models):
    """The opt-in scores (named in --scores) fit and score on every precision; no model runs again."""
    _, cache = first_run
    scores = "rmds,klm,she,dice,ash,ash:variant=ash_s,scale,fdbd,nnguide:K=10:alpha=0.5"
    results = run_eval(
        EvalConfig(models=models, id=ID, fit=FIT, ood=OOD, scores=scores, cache_dir=cache, progress=False)
    )
    assert not results.failures and results.cache["computed"] == 0
    for label in (m.label for m in results.models):
        for score in results.score_names:
            m = results.ood_metric(label, "photos", score)
            assert m is not None and 0.0 <= m.auroc <= 1.0, (label, score)


def test_tune_searches_each_tunable_grid_on_the_validation_sets(first_run, models, tmp_path):
    """--tune: results.json holds each grid, every point's validation AUROC and the chosen values,
    and the test-set metrics are those of the chosen values."""
    from vitqbench.ood import ScoreInputs, create_score
    from vitqbench.report import write_report

    _, cache = first_run
    config = EvalConfig(
        models=models[:1],
        id=ID,
        fit=FIT,
        ood={"photos": "photos"},
        scores="msp,gen,knn,react,vim",
        tune=True,
        val_id="digits:train:n=120:seed=5",
        val_ood="noise:uniform:n=60",
        cache_dir=cache,
        progress=False,
    )
    results = run_eval(config)
    # vim's grid (256, 1000) does not fit 64-d features: a failed cell with the reason
    assert [(f.stage, "vim dim must be in [1, 63]" in f.message) for f in results.failures] == [("tune vim", True)]
    tuned = {t["score"]: t for t in results.tuning}
    assert set(tuned) == {"gen", "knn", "react"}  # msp has no grid
    knn = tuned["knn"]
    assert knn["grid"] == {"k": [50, 100, 200, 500, 1000]}
    assert [p["val_auroc"] is None for p in knn["points"]] == [False, False, False, True, True]  # 400 fit samples
    best = max(p["val_auroc"] for p in knn["points"] if p["val_auroc"] is not None)
    assert knn["chosen"] == next(p["params"] for p in knn["points"] if p["val_auroc"] == best)
    assert len(tuned["gen"]["points"]) == 42
    # the test metrics are those of the chosen k
    id_out, ood_out = (np.load(p) for p in _cached_outputs(cache, results, (ID, "photos")))
    fit_out = np.load(_cached_outputs(cache, results, ("fit",))[0])
    score = create_score("knn", **knn["chosen"]).fit(ScoreInputs(features=fit_out["features"]))
    want = ood_metrics(
        score.score(ScoreInputs(features=id_out["features"])), score.score(ScoreInputs(features=ood_out["features"]))
    )
    assert results.ood_metric(results.models[0].label, "photos", "knn").auroc == want.auroc
    write_report(results, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["tuning"][0]["points"][0]["val_auroc"] is not None and doc["settings"]["tune"] is True
    assert (
        "## Tuning on digits:train:n=120:seed=5 vs noise:uniform:n=60" in (tmp_path / "out" / "report.md").read_text()
    )


def _cached_outputs(cache: Path, results, names) -> list[Path]:
    from vitqbench.evaluate.cache import outputs_key

    keys = {d.name: d.key for d in results.datasets}
    tag = results.settings["target"]["tag"]
    return [cache / "outputs" / f"{outputs_key(results.models[0].sha256, keys[name], tag)}.npz" for name in names]


def test_without_tune_the_report_says_defaults_were_fixed(first_run):
    out, _ = first_run
    report = (out / "report.md").read_text()
    assert "fixed default parameters" in report and "OpenOOD v1.5 tunes vim" in report


def test_the_readme_recipe_reproduces_reported_numbers_from_saved_outputs(first_run, models):
    """README's `vitqbench.ood` recipe, run on a real run's --save-outputs (a fitted and a head-reading score)."""
    from vitqbench.metadata import read_head
    from vitqbench.ood import ScoreInputs, create_score
    from vitqbench.report.names import slug

    out, _ = first_run
    doc = json.loads((out / "results.json").read_text())
    model = doc["models"][1]  # the int8 model: its own head
    label = model["label"]
    fit, id_, ood = (np.load(out / "outputs" / f"{slug(f'{label}__{name}')}.npz") for name in ("fit", ID, "photos"))
    head = read_head(model["path"])
    for name, fit_inputs in (
        ("mahalanobis", ScoreInputs(features=fit["features"], labels=fit["labels"])),
        ("vim", ScoreInputs(features=fit["features"], head=head)),
    ):
        score = create_score(name).fit(fit_inputs)
        m = ood_metrics(
            score.score(ScoreInputs(features=id_["features"])), score.score(ScoreInputs(features=ood["features"]))
        )
        row = next(r for r in doc["ood_metrics"] if (r["model"], r["dataset"], r["score"]) == (label, "photos", name))
        for key in ("auroc", "aupr_in", "aupr_out", "fpr95_id_positive", "fpr95_ood_positive"):
            assert getattr(m, key) == pytest.approx(row[key], abs=1e-12), (name, key)
