"""`vitqbench quantize` through the CLI: the 8-bit happy path and every bad-input path (one line, exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from vitqbench.metadata import METADATA_KEY, read_metadata


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        (folder / label).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / label / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def no_metadata_onnx(tiny_onnx, tmp_path_factory):
    model = onnx.load(str(tiny_onnx))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    out = tmp_path_factory.mktemp("plain") / "plain.onnx"
    onnx.save(model, str(out))
    return out


def test_cli_quantize_8bit(run_cli, tiny_onnx, image_folder, tmp_path):
    out = tmp_path / "tiny.int8.onnx"
    result = run_cli(
        "quantize",
        tiny_onnx,
        "--bits",
        "8",
        "--calib",
        image_folder,
        "--calib-size",
        "4",
        "--seed",
        "7",
        "--exclude",
        "head",
        "--calib-method",
        "percentile",
        "-o",
        out,
    )
    assert result.code == 0, result.stderr
    assert "wrote" in result.stdout and "int8" in result.stdout
    record = read_metadata(out).quantization
    assert record["calibration"]["size"] == 4 and record["seed"] == 7
    assert record["calib_method"] == "percentile" and record["exclude"] == ["head"]
    assert len(record["float_nodes"]) == 1
    # Quantizing an already-quantized file is refused.
    again = run_cli("quantize", out, "--bits", "8", "--calib", image_folder, "-o", tmp_path / "again.onnx")
    assert again.code == 2 and "already quantized" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "5", "--calib", "{folder}"], "--bits must be 8 or 4"),
        (["--bits", "8"], "needs calibration images"),
        (["--bits", "8", "--calib", "{tmp}/missing"], "no such file"),
        (["--bits", "8", "--calib", "{empty}"], "no images"),
        (["--bits", "8", "--calib", "{folder}", "--calib-size", "50"], "has 6 images, fewer than --calib-size 50"),
        (["--bits", "8", "--calib", "{folder}", "--calib-size", "0"], "at least 1"),
        (["--bits", "8", "--calib", "{folder}", "--calib-size", "4", "--exclude", "nothing*"], "matches no group"),
        (["--bits", "8", "--calib", "{folder}", "--calib-method", "kl"], "unknown calibration method"),
        (["--bits", "8", "--calib", "{folder}", "--activation-type", "int4"], "unknown activation type"),
        (["--bits", "8", "--calib", "{folder}", "--algo", "rtn"], "--algo does not apply to --scheme w8a8"),
        (["--bits", "4", "--exclude", "head"], "--exclude does not apply to --scheme w4"),
    ],
)
def test_cli_quantize_bad_input(run_cli, tiny_onnx, image_folder, tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(folder=image_folder, tmp=tmp_path, empty=empty) for a in args]
    out = tmp_path / "out.onnx"
    result = run_cli("quantize", tiny_onnx, *args, "-o", out)
    assert result.code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.onnx*"))


def test_cli_quantize_needs_metadata(run_cli, no_metadata_onnx, image_folder, tmp_path):
    result = run_cli("quantize", no_metadata_onnx, "--bits", "8", "--calib", image_folder, "-o", tmp_path / "o.onnx")
    assert result.code == 2 and "no vitqbench metadata" in result.stderr and "vitqbench export" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_cli_quantize_refuses_to_overwrite_input(run_cli, tiny_onnx, image_folder):
    result = run_cli("quantize", tiny_onnx, "--bits", "8", "--calib", image_folder, "-o", tiny_onnx)
    assert result.code == 2 and "overwrite the input" in result.stderr


def test_cli_quantize_4bit_goes_through_the_shared_record(run_cli, tiny_onnx, image_folder, tmp_path):
    from vitqbench.files import sha256_file

    out = tmp_path / "tiny.int4.onnx"
    result = run_cli("quantize", tiny_onnx, "--bits", "4", "--algo", "rtn", "--calib", image_folder, "-o", out)
    assert result.code == 0, result.stderr
    meta = read_metadata(out)
    record = meta.quantization
    assert meta.precision == "w4" and record["bits"] == 4
    assert record["parent"]["sha256"] == sha256_file(tiny_onnx)
    assert record["calibration"] is None and record["seed"] is None  # rtn reads no data
    assert meta.outputs == read_metadata(tiny_onnx).outputs


def test_cli_quantize_4bit_default_algorithm_follows_the_data(run_cli, tiny_onnx, image_folder, tmp_path):
    """No --algo: gptq (the measured best) when calibration images are given, data-free rtn otherwise."""
    without = tmp_path / "rtn.onnx"
    assert run_cli("quantize", tiny_onnx, "--bits", "4", "-o", without).code == 0
    assert read_metadata(without).quantization["algorithm"] == "rtn"
    with_calib = tmp_path / "gptq.onnx"
    result = run_cli(
        "quantize", tiny_onnx, "--bits", "4", "--calib", image_folder, "--calib-size", "4", "-o", with_calib
    )
    assert result.code == 0, result.stderr
    assert read_metadata(with_calib).quantization["algorithm"] == "gptq"


def test_cli_quantize_calibrates_from_an_image_list_under_data_root(run_cli, tiny_onnx, image_folder, tmp_path):
    """OpenOOD-style lists name images relative to a data root, not to the list's own folder."""
    listing = tmp_path / "lists" / "calib.txt"
    listing.parent.mkdir()
    listing.write_text("".join(f"{label}/{i}.png {n}\n" for n, label in enumerate("ab") for i in range(3)))
    out = tmp_path / "tiny.int8.onnx"
    args = ("quantize", tiny_onnx, "--bits", "8", "--calib", listing, "--calib-size", "6", "-o", out)

    result = run_cli(*args, "--data-root", image_folder)
    assert result.code == 0, result.stderr
    calibration = read_metadata(out).quantization["calibration"]
    assert calibration["data_root"] == str(image_folder) and calibration["size"] == 6

    out.unlink()
    missing = run_cli(*args)  # without the root the paths resolve under lists/, where nothing is
    assert missing.code != 0 and not out.exists()
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr


@pytest.mark.parametrize("bits", ["8", "4"])
def test_quantizing_twice_gives_the_same_bytes(run_cli, tiny_onnx, image_folder, tmp_path, bits):
    """No timings or other run-to-run noise in the file: eval's cache is keyed on its hash."""
    from vitqbench.files import sha256_file

    outs = [tmp_path / f"{i}.onnx" for i in range(2)]
    for out in outs:
        result = run_cli("quantize", tiny_onnx, "--bits", bits, "--calib", image_folder, "--calib-size", "4", "-o", out)
        assert result.code == 0, result.stderr
    assert sha256_file(outs[0]) == sha256_file(outs[1])


def test_unreadable_calibration_images_are_skipped_recorded_and_warned(run_cli, tiny_onnx, image_folder, tmp_path):
    import shutil

    folder = tmp_path / "calib"
    shutil.copytree(image_folder, folder)
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "q.onnx"
    args = ("quantize", tiny_onnx, "--bits", "8", "--calib", folder, "--calib-size", "7", "-o", out)
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    assert "warning: 1 unreadable calibration image(s) skipped" in result.stderr
    calibration = read_metadata(out).quantization["calibration"]
    assert calibration["drawn"] == 7 and calibration["size"] == 6
    assert [Path(p).name for p in calibration["skipped"]] == ["broken.png"]

    out.unlink()
    strict = run_cli(*args, "--strict")
    assert strict.code == 2 and "broken.png" in strict.stderr and not out.exists()


def test_histogram_calibration_copes_with_unreadable_images(run_cli, tiny_onnx, image_folder, tmp_path):
    """Entropy and percentile calibrators fail on an empty window, which a skipped image used to leave."""
    import shutil

    folder = tmp_path / "calib"
    shutil.copytree(image_folder, folder)
    (folder / "b" / "2.png").unlink()
    (folder / "b" / "1.png").unlink()
    (folder / "b" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "q.onnx"
    # 5 drawn, 4 readable: one batch of 4, where the drawn count promised two windows.
    args = ("--calib", folder, "--calib-size", "5", "--calib-method", "percentile", "-o", out)
    result = run_cli("quantize", tiny_onnx, "--bits", "8", *args)
    assert result.code == 0, result.stderr
    assert read_metadata(out).quantization["calibration"]["size"] == 4
