"""The metadata contract and a training checkpoint's header: malformed or invalid values are one line."""

from __future__ import annotations

import json
import os

import onnx
import pytest
import torch
from clihelpers import one_line_error
from safetensors.torch import save_file

from vitqbench.errors import VitqbenchError
from vitqbench.metadata import METADATA_KEY, DataConfig, ModelMetadata, read_metadata


def _document(tiny_onnx) -> dict:
    return json.loads(read_metadata(tiny_onnx).to_json())


def _with_metadata(tiny_onnx, tmp_path, text: str):
    model = onnx.load(str(tiny_onnx))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = text
    path = tmp_path / "crafted.onnx"
    onnx.save(model, str(path))
    return path


def _edit(doc: dict, dotted: str, value) -> dict:
    doc = json.loads(json.dumps(doc))
    *parents, last = dotted.split(".")
    target = doc
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return doc


BAD_FIELDS = [  # (field, value, what the error names)
    ("data_config", KeyError, "field data_config"),
    ("data_config.input_size", "224", "data_config.input_size"),
    ("data_config.input_size", [3, 32, 0], "data_config.input_size"),
    ("data_config.mean", "0.5", "data_config.mean"),
    ("data_config.mean", [float("nan")] * 3, "data_config.mean must be finite"),
    ("data_config.std", [0, 0.5, 0.5], "data_config.std must be positive"),
    ("data_config.std", [float("nan")] * 3, "data_config.std must be finite"),
    ("data_config.std", [0.5], "data_config.std has 1 values"),
    ("data_config.crop_pct", 1e-6, "data_config.crop_pct must be in"),
    ("data_config.crop_pct", 50.0, "data_config.crop_pct must be in [0.1, 2.0]"),
    ("data_config.crop_pct", "0.9", "data_config.crop_pct must be a number"),
    ("data_config.interpolation", "sinc", "unknown data_config.interpolation 'sinc'"),
    ("data_config.crop_mode", "zoom", "unknown data_config.crop_mode 'zoom'"),
    ("timm_name", KeyError, "field timm_name must be a string, got missing"),
    ("num_classes", "10", "field num_classes must be a whole number"),
    ("num_classes", 0, "field num_classes must be positive"),
    ("head", {"weight": 3}, "field head"),
    ("outputs", {"logits": 1}, "field outputs"),
    ("class_names", "abc", "field class_names"),
    ("surprise", 1, "unknown field(s) surprise"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD_FIELDS)
def test_malformed_metadata_fields_are_named(tiny_onnx, tmp_path, field, value, named):
    path = _with_metadata(tiny_onnx, tmp_path, json.dumps(_edit(_document(tiny_onnx), field, value)))
    with pytest.raises(VitqbenchError, match="bad vitqbench metadata") as err:
        read_metadata(path)
    assert named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"', "null"])
def test_metadata_that_is_not_an_object(tiny_onnx, tmp_path, text):
    with pytest.raises(VitqbenchError, match="bad vitqbench metadata"):
        read_metadata(_with_metadata(tiny_onnx, tmp_path, text))


def test_the_written_metadata_still_reads_back(tiny_onnx):
    meta = read_metadata(tiny_onnx)
    assert ModelMetadata.from_json(meta.to_json()) == meta


@pytest.mark.parametrize("command", ["eval", "bench", "quantize"])
def test_commands_refuse_bad_metadata_with_one_line(tiny_onnx, tmp_path, run_cli, command):
    doc = _edit(_document(tiny_onnx), "data_config.std", [0.0, 0.0, 0.0])
    path = _with_metadata(tiny_onnx, tmp_path, json.dumps(doc))
    args = {
        "eval": ["eval", "-m", path, "--id", "noise:gaussian:n=4", "--out", tmp_path / "out", "--no-progress"],
        "bench": ["bench", path, "--iters", "1", "--warmup", "0", "--rounds", "1"],
        "quantize": ["quantize", path, "--bits", "8", "--calib", "noise:gaussian:n=4", "-o", tmp_path / "q.onnx"],
    }[command]
    result = run_cli(*args, "--cache-dir", tmp_path / "cache") if command == "eval" else run_cli(*args)
    one_line_error(result, "data_config.std must be positive")
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "out" / "results.json").exists()


def test_data_config_is_checked_on_construction():
    with pytest.raises(VitqbenchError, match="crop_pct"):
        DataConfig(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.0)
    with pytest.raises(VitqbenchError, match="mean has 1 values"):
        DataConfig(input_size=(3, 32, 32), mean=(0.5,), std=(0.5,) * 3)


SMALL_SET = ["--set=img_size=32", "--set=patch_size=8", "--set=depth=1", "--set=embed_dim=32", "--set=num_heads=2"]


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--std", "nan", "data_config.std must be finite"),
        ("--std", "0", "data_config.std must be positive"),
        ("--mean", "nan", "data_config.mean must be finite"),
        ("--crop-pct", "1e-6", "data_config.crop_pct must be in"),
        ("--crop-pct", "0", "data_config.crop_pct must be in"),
    ],
)
def test_export_refuses_invalid_data_config_flags(tmp_path, run_cli, flag, value, named):
    out = tmp_path / "m.onnx"
    result = run_cli("export", "deit_tiny_patch16_224", "--no-pretrained", *SMALL_SET, flag, value, "-o", out)
    one_line_error(result, named)
    assert not out.exists()


def _checkpoint(tmp_path, header: str):
    import timm

    net = timm.create_model("vit_tiny_patch16_224", **GOOD_HEADER["model_kwargs"])
    path = tmp_path / "c.safetensors"
    save_file(net.state_dict(), str(path), metadata={"vitqbench.checkpoint": header})
    return path


GOOD_HEADER = {
    "timm_name": "vit_tiny_patch16_224",
    "model_kwargs": {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2, "num_classes": 3},
    "data_config": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0},
    "class_names": ["a", "b", "c"],
}


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("{bad json", "bad description header: "),
        ("[1, 2]", "a JSON list, not an object"),
        (json.dumps({k: v for k, v in GOOD_HEADER.items() if k != "timm_name"}), "field timm_name"),
        (json.dumps({**GOOD_HEADER, "model_kwargs": "depth=1"}), "field model_kwargs must be an object"),
        (json.dumps({**GOOD_HEADER, "class_names": "abc"}), "field class_names"),
        (json.dumps({**GOOD_HEADER, "data_config": {"mean": "0.5"}}), "data_config.mean must be a list of numbers"),
        (json.dumps({**GOOD_HEADER, "data_config": {"std": [0, 0, 0]}}), "data_config.std must be positive"),
        (json.dumps({**GOOD_HEADER, "data_config": {"crop_pct": 1e-6}}), "data_config.crop_pct must be in"),
    ],
)
def test_malformed_checkpoint_headers_are_one_line(tmp_path, run_cli, header, named):
    out = tmp_path / "m.onnx"
    one_line_error(run_cli("export", _checkpoint(tmp_path, header), "-o", out), named)
    assert not out.exists()


def test_a_good_checkpoint_header_exports(tmp_path, run_cli):
    out = tmp_path / "m.onnx"
    result = run_cli("export", _checkpoint(tmp_path, json.dumps(GOOD_HEADER)), "-o", out)
    assert result.code == 0, result.stderr
    assert read_metadata(out).class_names == ["a", "b", "c"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_pickle_refusal_keeps_the_reason_whole(tmp_path, run_cli):
    path = tmp_path / "evil.pth"
    torch.save({"weight": _RunsCode()}, path)
    result = run_cli("export", "deit_tiny_patch16_224", "--checkpoint", path, "-o", tmp_path / "m.onnx")
    one_line_error(result, "cannot read checkpoint", "weights_only=True")
    assert "system" in result.stderr  # torch's reason (the global it refused) is kept, not cut off
    assert "should-never-run" not in result.stdout + result.stderr
