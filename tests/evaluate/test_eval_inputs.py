"""What eval makes of its inputs: named ID sets, near/far OOD groups, class names, refusals, no empty report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

from vitqbench.metadata import get_metadata, set_metadata


def _with_metadata(src: Path, dst: Path, **changes) -> Path:
    model = onnx.load(str(src))
    meta = get_metadata(model)
    for key, value in changes.items():
        setattr(meta, key, value)
    set_metadata(model, meta)
    onnx.save(model, str(dst))
    return dst


def _class_folders(root: Path, names: list[str], per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _common(tmp_path: Path, out: str) -> tuple[str, ...]:
    return ("--cache-dir", str(tmp_path / "cache"), "--no-progress", "--out", str(tmp_path / out))


def test_named_id_set_and_ood_groups_give_near_far_and_synthetic_means(run_cli, tiny_onnx, tmp_path):
    result = run_cli(
        "eval", "-m", tiny_onnx, "--id", "mine=digits:test:n=40", "--scores", "msp,energy",
        "--ood", "near:held=digits:train:n=30", "--ood", "far:photos=photos",
        "--ood", "far:fuzz=noise:uniform:n=20", "--ood", "noise=noise:gaussian:n=20",
        *_common(tmp_path, "out"),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    groups = {d["name"]: (d["role"], d["group"]) for d in doc["datasets"]}
    assert groups == {
        "mine": ("id", None),
        "held": ("ood", "near"),
        "photos": ("ood", "far"),
        "fuzz": ("ood", "synthetic"),  # synthetic data is never far-OOD, whatever it was given
        "noise": ("ood", "synthetic"),
    }
    assert any("fuzz is synthetic" in w for w in doc["warnings"])
    auroc = {(m["dataset"], m["score"]): m["auroc"] for m in doc["ood_metrics"]}
    for score in ("msp", "energy"):
        assert auroc[("mean:near", score)] == auroc[("held", score)]
        assert auroc[("mean:far", score)] == auroc[("photos", score)]
        assert np.isclose(auroc[("mean", score)], (auroc[("held", score)] + auroc[("photos", score)]) / 2)
        assert np.isclose(auroc[("mean:synthetic", score)], (auroc[("fuzz", score)] + auroc[("noise", score)]) / 2)
    assert doc["id_metrics"][0]["dataset"] == "mine"
    assert "near" in result.stdout and "far" in result.stdout  # the terminal summary's columns


def test_default_scores_without_fit_say_which_were_dropped(run_cli, tiny_onnx, tmp_path):
    result = run_cli("eval", "-m", tiny_onnx, "--id", "digits:test:n=30", "--ood", "p=photos", *_common(tmp_path, "o"))
    assert result.code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "skipped" in line and "--fit" in line]
    assert len(lines) == 1 and "mahalanobis" in lines[0] and "vim" in lines[0], result.stderr


def test_class_folders_that_differ_from_the_models_class_names_warn(run_cli, tiny_onnx, tmp_path):
    named = _with_metadata(tiny_onnx, tmp_path / "named.onnx", class_names=[f"c{i}" for i in range(10)])
    folders = _class_folders(tmp_path / "id", ["c0", "c1", "dog"])
    result = run_cli(
        "eval", "-m", named, "--id", folders, "--ood", "p=photos", "--scores", "msp", *_common(tmp_path, "o")
    )
    assert result.code == 0, result.stderr
    assert "1 of 3 class folder names differ" in result.stderr and "'dog'" in result.stderr
    same = _class_folders(tmp_path / "id2", ["c0", "c1", "c2"])
    result = run_cli(
        "eval", "-m", named, "--id", same, "--ood", "p=photos", "--scores", "msp", *_common(tmp_path, "o2")
    )
    assert result.code == 0 and "class folder names" not in result.stderr


def test_head_scores_on_a_model_without_a_head_are_refused_before_inference(run_cli, tiny_onnx, tmp_path):
    headless = _with_metadata(tiny_onnx, tmp_path / "distilled.onnx", head=None)
    result = run_cli(
        "eval", "-m", tiny_onnx, "-m", headless, "--id", "digits:test:n=30", "--fit", "digits:train:n=30",
        "--ood", "p=photos", "--scores", "msp,vim", *_common(tmp_path, "o"),
    )  # fmt: skip
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "vim" in result.stderr and "distilled" in result.stderr
    assert not (tmp_path / "o").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing ran


def test_a_run_that_measures_nothing_writes_nothing(run_cli, tiny_onnx, tmp_path):
    too_many = _class_folders(tmp_path / "id", [f"k{i:02d}" for i in range(12)], per_class=1)  # labels 10, 11
    result = run_cli(
        "eval", "-m", tiny_onnx, "--id", too_many, "--ood", "p=photos", "--scores", "msp", *_common(tmp_path, "o")
    )
    assert result.code == 2 and "nothing could be measured" in result.stderr, result.stderr
    assert "outside the model's 10 classes" in result.stderr
    assert not (tmp_path / "o" / "report.md").exists() and not (tmp_path / "o" / "results.json").exists()
