"""Outputs that cannot be written, and settings that cannot work, fail at once with one line (exit 2)."""

from __future__ import annotations

import pytest

TINY = "--no-pretrained --set img_size=32 --set patch_size=8 --set depth=1"
TRAIN = "train --data digits:train --epochs 1"
CASES = {
    "export into a folder": (f"export vit_tiny_patch16_224 {TINY} -o TMP", "is a folder"),
    "quantize into a folder": ("quantize ONNX --bits 4 -o TMP", "is a folder"),
    "quantize into a missing folder": ("quantize ONNX --bits 4 -o TMP/nodir/q.onnx", "does not exist"),
    "train into a missing folder": (f"{TRAIN} -o TMP/nodir/t.safetensors", "does not exist"),
    "train a CNN": (f"{TRAIN} --model resnet18 -o TMP/t.safetensors", "not a vision transformer"),
    "train with a negative lr": (f"{TRAIN} --lr -1 -o TMP/t.safetensors", "--lr must be positive"),
    "bench json into a missing folder": ("bench ONNX --iters 1 --json TMP/nodir/b.json", "does not exist"),
    "eval into a file": ("eval -m ONNX --id digits:test -o TMP/a_file", "is a file"),
    "eval with zero threads": ("eval -m ONNX --id digits:test --threads 0 -o TMP/e", "--threads must be in 1.."),
    "demo into a file": ("demo --out TMP/a_file", "is a file"),
    "demo with zero epochs": ("demo --epochs 0 --out TMP/d", "--epochs must be at least 1"),
    "eval with a mistyped ID set": ("eval -m ONNX --id digits:tset -o TMP/e", "ID set digits:tset: unknown option"),
    "eval with a missing ID folder": ("eval -m ONNX --id TMP/nodir -o TMP/e", "no such file or directory"),
    "export of an ONNX file": ("export ONNX -o TMP/x.onnx", "is an ONNX file"),
    "eval with an unknown FPR convention": (
        "eval -m ONNX --id digits:test --fpr-convention ood -o TMP/e",
        "--fpr-convention must be openood or id-positive",
    ),
    "eval --tune without validation OOD": (
        "eval -m ONNX --id digits:test --tune --val-id digits:train -o TMP/e",
        "--tune needs --val-id DATA and --val-ood DATA",
    ),
    "eval with validation sets but no --tune": (
        "eval -m ONNX --id digits:test --val-ood photos -o TMP/e",
        "read only with --tune",
    ),
    "sweep --tune without validation sets": ("sweep --preset tiny --tune -o TMP/s", "tune needs val_id"),
    "sweep with an unknown FPR convention": ("sweep --preset tiny --fpr-convention x -o TMP/s", "--fpr-convention"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fails_fast_with_one_line(case, run_cli, tiny_onnx, tmp_path):
    (tmp_path / "a_file").write_text("x")
    command, message = CASES[case]
    args = [a.replace("TMP", str(tmp_path)).replace("ONNX", str(tiny_onnx)) for a in command.split()]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(*args)
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing half-written
