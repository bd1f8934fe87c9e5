"""`vitqbench sweep`: TOML parsing, presets, and a tiny offline study run twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.sweep import load_sweep_config, parse_sweep, preset_names

TINY_TOML = """
[study]
name = "t"
scores = ["msp", "vim"]

[[models]]
name = "deit_tiny_patch16_224"
label = "m"
pretrained = false
kwargs = { img_size = 32, patch_size = 8, depth = 1, embed_dim = 32, num_heads = 2, num_classes = 10 }

[[precisions]]
name = "fp32"

[[precisions]]
name = "int8"
per_channel = false

[[precisions]]
name = "int4"
bits = 4
block_size = 32

[data]
id = "digits:test"
fit = "digits:train:n=200"
calib = "digits:train"
calib_size = 16

[data.ood]
noise = "noise:gaussian:n=60"
"""


def test_presets_parse_and_name_real_timm_tags():
    import timm

    assert {"paper", "tiny"} <= set(preset_names())
    paper = load_sweep_config(preset="paper")
    names = [m.name for m in paper.models]
    assert names == [
        "deit_small_patch16_224.fb_in1k",
        "deit3_small_patch16_224.fb_in1k",
        "deit3_small_patch16_224.fb_in22k_ft_in1k",
        "vit_small_patch16_224.augreg_in1k",
        "vit_small_patch16_224.augreg_in21k_ft_in1k",
    ]
    assert all(n in timm.list_pretrained(n) for n in names)
    assert [p.name for p in paper.precisions] == ["fp32", "w8a8", "w4a4", "w4", "w8a8-dynamic"]
    assert set(paper.ood) == {"ssb_hard", "ninco", "inaturalist", "textures", "openimage_o"}
    assert paper.ood["textures"].root == "images_classic"


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"data": {"id": "digits"}}, "no [[models]]"),
        ({"models": [{"name": "x"}]}, "needs id"),
        ({"models": [{"name": "x", "colour": 1}], "data": {"id": "d"}}, "unknown key(s) colour"),
        ({"models": [{"name": "x"}], "data": {"id": "d"}, "precisions": [{"name": "int3"}]}, "bits = 8 or 4"),
        ({"models": [{"name": "x"}, {"name": "x"}], "data": {"id": "d"}}, "listed twice"),
    ],
)
def test_bad_sweep_files_fail_with_one_line(doc, message):
    with pytest.raises(VitqbenchError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_sweep(doc)


def test_sweep_runs_every_cell_then_reuses_everything(tmp_path, run_cli, monkeypatch):
    import vitqbench.export
    import vitqbench.quant

    study = tmp_path / "study.toml"
    study.write_text(TINY_TOML)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["sweep", study, "--out", out, "--cache-dir", cache, "--no-pretrained", "--no-progress"]
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    doc = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in doc["models"]] == ["m.fp32", "m.int8", "m.int4"]
    assert [m["precision"] for m in doc["models"]] == ["fp32", "w8a8", "w4"]
    assert [m["execution"] for m in doc["models"]] == [None, "integer-kernels", "integer-kernels"]
    assert {m["baseline"] for m in doc["models"]} == {"m.fp32"}
    assert doc["models"][1]["metadata"]["quantization"]["per_channel"] is False
    assert doc["settings"]["sweep"]["name"] == "t"
    assert {(d["model"], d["metric"]) for d in doc["deltas"]} >= {("m.int8", "top1"), ("m.int4", "auroc")}
    assert (out / "report.md").stat().st_size > 0

    stamps = {p: p.stat().st_mtime_ns for p in (out / "models").glob("*.onnx")}
    called = []
    monkeypatch.setattr(vitqbench.export, "export_model", lambda *a, **k: called.append("export"))
    monkeypatch.setattr(vitqbench.quant, "quantize_model", lambda *a, **k: called.append("quantize"))
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    again = json.loads((out / "results.json").read_text())
    assert called == [] and again["cache"]["computed"] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "models").glob("*.onnx")} == stamps
    assert again["ood_metrics"] == doc["ood_metrics"]


def test_changed_precision_options_requantize_only_that_file(tmp_path, run_cli):
    study = tmp_path / "study.toml"
    study.write_text(TINY_TOML.replace('[[precisions]]\nname = "int4"\nbits = 4\nblock_size = 32\n', ""))
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["sweep", study, "--out", out, "--cache-dir", cache, "--no-pretrained", "--no-progress"]
    assert run_cli(*args).code == 0
    fp32, int8 = out / "models" / "m.fp32.onnx", out / "models" / "m.int8.onnx"
    before = fp32.stat().st_mtime_ns, int8.stat().st_mtime_ns
    study.write_text(study.read_text().replace("per_channel = false", "per_channel = true"))
    assert run_cli(*args).code == 0
    assert fp32.stat().st_mtime_ns == before[0] and int8.stat().st_mtime_ns != before[1]
    doc = json.loads((out / "results.json").read_text())
    assert doc["models"][1]["metadata"]["quantization"]["per_channel"] is True


def test_sweep_cli_errors(tmp_path, run_cli):
    result = run_cli("sweep", "--preset", "nope", "--out", tmp_path)
    assert result.code == 2 and "unknown preset" in result.stderr
    result = run_cli("sweep", "--out", tmp_path)
    assert result.code == 2 and "--preset" in result.stderr
    result = run_cli("sweep", "--preset", "paper", "--show")
    assert result.code == 0 and "fb_in22k_ft_in1k" in result.stdout
    result = run_cli("sweep", tmp_path / "missing.toml", "--show")
    assert result.code == 2 and result.stderr.strip() == f"error: no such sweep file: {tmp_path / 'missing.toml'}"


MODEL = {"name": "deit_tiny_patch16_224"}


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"study": {"batch_size": "x"}}, "[study]: batch_size must be an integer, got a string 'x'"),
        ({"study": {"batch_size": 0}}, "[study]: batch_size must be at least 1, got 0"),
        ({"study": {"seed": -1}}, "[study]: seed must be a whole number in 0..4294967295, got -1"),
        ({"study": {"bench": "yes"}}, "[study]: bench must be true or false, got a string 'yes'"),
        ({"study": {"scores": [1, 2]}}, "[study]: scores must be a list of strings or a string"),
        ({"study": ["x"]}, "study must be a table [study], got an array"),
        ({"data": {"id": "d", "calib_size": "64"}}, "[data]: calib_size must be an integer, got a string '64'"),
        ({"data": {"id": "d", "calib": 3}}, "root = FOLDER, group = near|far|synthetic }, got 3"),
        ({"data": {"id": "d", "ood": ["x"]}}, "[data]: ood must be a table, got an array"),
        ({"models": [{**MODEL, "kwargs": "depth=2"}]}, "[[models]]: kwargs must be a table, got a string"),
        ({"models": [{**MODEL, "seed": 1.5}]}, "[[models]]: seed must be an integer, got a number 1.5"),
        ({"models": [{**MODEL, "pretrained": 1}]}, "[[models]]: pretrained must be true or false, got an integer"),
        ({"models": {"name": "x"}}, "models must be an array of tables [[models]], got a table"),
        ({"precisions": [{"name": "q", "bits": True}]}, "bits must be 8 or 4 (got True)"),
    ],
)
def test_sweep_type_errors_fail_at_parse_time_with_one_line(doc, message):
    doc = {"models": [MODEL], "data": {"id": "d"}, **doc}
    with pytest.raises(VitqbenchError) as err:
        parse_sweep(doc, "s.toml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_bench_option_is_rejected_at_parse_time_naming_the_valid_ones():
    doc = {"models": [MODEL], "data": {"id": "d"}, "study": {"bench": True, "bench_options": {"iter": 3}}}
    with pytest.raises(VitqbenchError) as err:
        parse_sweep(doc, "s.toml")
    assert str(err.value) == (
        "s.toml [study.bench_options]: unknown key(s) iter (allowed: batches, io_binding, iters, rounds, "
        "seconds, seed, timeout_s, torch_baseline, warmup)"
    )
    doc["study"]["bench_options"] = {"batches": ["1"]}
    with pytest.raises(VitqbenchError, match="batches must be a list of integers, got an array"):
        parse_sweep(doc, "s.toml")
    doc["study"]["bench_options"] = {"iters": 0}
    with pytest.raises(VitqbenchError, match=r"bench_options\]: --iters must be positive, got 0"):
        parse_sweep(doc, "s.toml")
    doc["study"]["bench_options"] = {"iters": 3, "batches": [1, 2]}
    assert parse_sweep(doc, "s.toml").bench_options == {"iters": 3, "batches": [1, 2]}


def test_a_bad_sweep_file_runs_nothing(tmp_path, run_cli):
    study = tmp_path / "s.toml"
    study.write_text(TINY_TOML.replace('name = "t"', 'name = "t"\nbench_options = { iter = 3 }'))
    result = run_cli("sweep", study, "--out", tmp_path / "out")
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "unknown key(s) iter" in result.stderr and not (tmp_path / "out").exists()


def test_missing_data_root_lists_fail_as_cells(tmp_path):
    config = load_sweep_config(preset="paper")
    from vitqbench.evaluate.sweep import _resolve, _roots

    assert _resolve(config.id, tmp_path) == config.id.spec  # not under the root: left as written
    (tmp_path / "benchmark_imglist" / "imagenet").mkdir(parents=True)
    (tmp_path / "benchmark_imglist/imagenet/test_imagenet.txt").write_text("")
    assert _resolve(config.id, tmp_path) == str(tmp_path / config.id.spec)
    assert _roots(config, tmp_path)["textures"] == tmp_path / "images_classic"
    assert Path(_roots(config, tmp_path)["id"]).name == "images_largescale"


def test_fp32_is_always_evaluated_as_the_baseline():
    """Without it, int4's deltas would silently be against int8."""
    doc = {
        "models": [{"name": "deit_tiny_patch16_224"}],
        "precisions": [{"name": "int8"}, {"name": "int4"}],
        "data": {"id": "digits:test"},
    }
    assert [p.name for p in parse_sweep(doc).precisions] == ["fp32", "int8", "int4"]
    doc["precisions"] = [{"name": "int8"}, {"name": "fp32"}]
    assert [p.name for p in parse_sweep(doc).precisions] == ["int8", "fp32"]


def test_edited_calibration_folder_requantizes_and_dropped_kwargs_reexport(tmp_path, run_cli):
    from PIL import Image

    from vitqbench.evaluate.sweep import SweepModel, _export_matches

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    study = tmp_path / "study.toml"
    text = TINY_TOML.replace('[[precisions]]\nname = "int4"\nbits = 4\nblock_size = 32\n', "")
    study.write_text(text.replace('calib = "digits:train"', f'calib = "{calib}"'))
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["sweep", study, "--out", out, "--cache-dir", cache, "--no-pretrained", "--no-progress"]
    assert run_cli(*args).code == 0
    fp32, int8 = out / "models" / "m.fp32.onnx", out / "models" / "m.int8.onnx"
    before = fp32.stat().st_mtime_ns, int8.stat().st_mtime_ns
    (calib / "0.png").unlink()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(calib / "new.png")
    assert run_cli(*args).code == 0
    assert fp32.stat().st_mtime_ns == before[0] and int8.stat().st_mtime_ns != before[1]

    kwargs = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2, "num_classes": 10}
    assert _export_matches(fp32, SweepModel("deit_tiny_patch16_224", kwargs=kwargs), False, None, False)
    fewer = {k: v for k, v in kwargs.items() if k != "num_classes"}  # the file has 10 classes, timm's default 1000
    assert not _export_matches(fp32, SweepModel("deit_tiny_patch16_224", kwargs=fewer), False, None, False)
    # a study with attention = true needs the attention outputs: this plain export is made again
    assert not _export_matches(fp32, SweepModel("deit_tiny_patch16_224", kwargs=kwargs), False, None, True)


def test_openood_style_lists_under_data_root_run_end_to_end(tmp_path, run_cli):
    """ID, OOD and calibration sets as image lists whose paths start under roots below --data-root."""
    from PIL import Image

    root = tmp_path / "openood"
    rng = np.random.default_rng(0)
    lists = root / "benchmark_imglist"
    lists.mkdir(parents=True)
    for name, count, labelled in (("id", 20, True), ("ood", 12, False)):
        lines = []
        for i in range(count):
            rel = f"{name}/{i}.png"
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "images" / rel)
            lines.append(f"{rel} {i % 10}" if labelled else rel)
        (lists / f"{name}.txt").write_text("\n".join(lines) + "\n")
    study = tmp_path / "study.toml"
    study.write_text(
        TINY_TOML.replace('scores = ["msp", "vim"]', 'scores = ["msp"]')
        .replace('fit = "digits:train:n=200"\n', "")
        .replace('id = "digits:test"', 'id = { spec = "benchmark_imglist/id.txt", root = "images" }')
        .replace('calib = "digits:train"', 'calib = { spec = "benchmark_imglist/id.txt", root = "images" }')
        .replace('noise = "noise:gaussian:n=60"', 'ood = { spec = "benchmark_imglist/ood.txt", root = "images" }')
    )
    out = tmp_path / "out"
    args = ["sweep", study, "--data-root", root, "--out", out, "--cache-dir", tmp_path / "cache"]
    result = run_cli(*args, "--no-pretrained", "--no-progress")
    assert result.code == 0, result.stderr
    doc = json.loads((out / "results.json").read_text())
    assert {d["role"]: d["size"] for d in doc["datasets"]} == {"id": 20, "ood": 12}
    calibration = doc["models"][1]["metadata"]["quantization"]["calibration"]
    assert calibration["size"] == 16 and calibration["data_root"] == str(root / "images")


def test_a_sweep_with_attention_exports_and_evaluates_it(tmp_path, run_cli):
    study = tmp_path / "study.toml"
    text = TINY_TOML.replace('[[precisions]]\nname = "int4"\nbits = 4\nblock_size = 32\n', "")
    study.write_text(text.replace('name = "t"', 'name = "t"\nattention = true'))
    out = tmp_path / "out"
    result = run_cli("sweep", study, "--out", out, "--cache-dir", tmp_path / "c", "--no-pretrained", "--no-progress")
    assert result.code == 0, result.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["settings"]["attention"] is True
    assert {r["model"] for r in doc["attention"]} == {"m.fp32", "m.int8"}
    assert all(r["drift_js"] is not None for r in doc["attention"] if r["model"] == "m.int8")
    assert "## Attention, ID vs OOD" in (out / "report.md").read_text()


def test_a_precision_name_with_a_dot_keeps_its_family_baseline(tmp_path):
    from vitqbench.evaluate.sweep import QuantizeCell, SweepOptions, plan_files

    doc = {
        "models": [{"name": "deit_tiny_patch16_224", "label": "m"}],
        "precisions": [{"name": "w8a8.pt", "scheme": "w8a8", "per_channel": False}],
        "data": {"id": "digits:test"},
    }
    cells = plan_files(parse_sweep(doc), SweepOptions(tmp_path / "out"), tmp_path / "models", tmp_path / "c")
    quantize = [c for c in cells if isinstance(c, QuantizeCell)]
    assert [(c.label, c.baseline) for c in quantize] == [("m.w8a8.pt", "m.fp32")]
