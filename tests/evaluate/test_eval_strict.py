"""`eval --strict`: an unreadable image fails its dataset instead of being skipped and listed."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image


def _ood_folder(tmp_path):
    folder = tmp_path / "ood"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    (folder / "broken.jpg").write_bytes(buffer.getvalue()[:200])
    return folder


def test_strict_fails_the_dataset_and_default_skips(run_cli, tiny_onnx, tmp_path):
    ood = _ood_folder(tmp_path)
    common = ("eval", "-m", tiny_onnx, "--id", "digits:test:n=30", "--ood", f"folder={ood}", "--scores", "msp")
    cache = ("--cache-dir", tmp_path / "cache", "--no-progress")

    lenient = run_cli(*common, *cache, "--out", tmp_path / "lenient")
    assert lenient.code == 0, lenient.stderr
    document = json.loads((tmp_path / "lenient" / "results.json").read_text())
    skipped = [d["skipped"] for d in document["datasets"] if d["name"] == "folder"][0]
    assert [s[0].endswith("broken.jpg") for s in skipped] == [True]

    strict = run_cli(*common, *cache, "--strict", "--out", tmp_path / "strict")
    assert strict.code == 2
    assert "broken.jpg" in strict.stderr or "broken.jpg" in (tmp_path / "strict" / "report.md").read_text()
