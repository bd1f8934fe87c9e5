"""Bad input across commands: seeds, threads, sweep labels, external data, opset, ORT's load-time logging."""

from __future__ import annotations

import os

import onnx
import pytest
from clihelpers import one_line_error
from onnx import TensorProto, helper

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.sweep import SweepModel, parse_sweep
from vitqbench.metadata import load_onnx, model_sha256, model_size_bytes


@pytest.mark.parametrize(
    "args",
    [
        ["quantize", "MODEL", "--bits", "8", "--calib", "digits:train", "--seed", "-1", "-o", "OUT/q.onnx"],
        ["train", "--data", "digits:train", "--seed", "-1", "-o", "OUT/c.safetensors", "--epochs", "1"],
        ["eval", "-m", "MODEL", "--id", "noise:gaussian:n=4", "--seed", "-1", "--out", "OUT/e", "--no-progress"],
        ["demo", "--seed", "-1", "--out", "OUT/d"],
        ["export", "deit_tiny_patch16_224", "--no-pretrained", "--seed", "-1", "-o", "OUT/m.onnx"],
    ],
)
def test_negative_seeds_are_one_line(tiny_onnx, tmp_path, run_cli, args):
    args = [str(tiny_onnx) if a == "MODEL" else a.replace("OUT", str(tmp_path)) for a in args]
    one_line_error(run_cli(*args), "--seed must be a whole number in 0..")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["study", "models"])
def test_negative_seeds_in_a_sweep_file(where):
    doc = {"models": [{"name": "deit_tiny_patch16_224"}], "data": {"id": "digits:test"}}
    if where == "study":
        doc["study"] = {"seed": -1}
    else:
        doc["models"][0]["seed"] = -1
    with pytest.raises(VitqbenchError, match="seed must be a whole number"):
        parse_sweep(doc)


def test_threads_are_bounded_by_the_cores_available(tiny_onnx, tmp_path, run_cli):
    out = tmp_path / "e"
    result = run_cli("eval", "-m", tiny_onnx, "--id", "noise:gaussian:n=4", "--threads", "5000", "--out", out)
    one_line_error(result, "--threads must be in 1..", "the cores available here")
    result = run_cli("bench", tiny_onnx, "--threads", "5000", "--iters", "1")
    one_line_error(result, "--threads must be in 1..")


def test_sweep_labels_stay_inside_the_output_folder():
    model = SweepModel(name="deit_tiny_patch16_224", label="../../ESCAPED")
    assert "/" not in model.slug and model.slug.endswith("ESCAPED")
    doc = {
        "models": [{"name": "deit_tiny_patch16_224", "label": "../../ESCAPED"}],
        "precisions": [{"name": "../../int8", "bits": 8}],
        "data": {"id": "digits:test"},
    }
    study = parse_sweep(doc)
    from vitqbench.evaluate import sweep

    names = [f"{m.slug}.{sweep.safe_name(p.name)}" for m in study.models for p in study.precisions]
    assert all("/" not in name for name in names)


def _external_model(folder, location: str):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y])
    weight = graph.initializer.add()
    weight.name, weight.data_type, weight.dims[:] = "w", TensorProto.FLOAT, [2]
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("length", "8")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = folder / "ext.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_model_folder_is_refused_before_reading(tmp_path, how):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 8)
    folder = tmp_path / "model"
    folder.mkdir()
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "weights.bin"}[how]
    if how == "symlink":
        os.symlink(secret, folder / "weights.bin")
    path = _external_model(folder, location)
    for read in (model_sha256, model_size_bytes, load_onnx):
        with pytest.raises(VitqbenchError, match="lies outside the model's folder"):
            read(path)


def test_external_data_inside_the_folder_still_loads(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    path = _external_model(tmp_path, "weights.bin")
    assert model_size_bytes(path) == path.stat().st_size + 8
    assert len(load_onnx(path).graph.initializer[0].raw_data) == 8


def test_an_opset_newer_than_onnx_is_refused_up_front(tmp_path, run_cli):
    result = run_cli("export", "deit_tiny_patch16_224", "--no-pretrained", "--opset", "99", "-o", tmp_path / "m.onnx")
    one_line_error(result, "opset 99 is newer than the installed onnx knows")


def test_onnx_runtime_prints_no_coloured_log_lines_while_loading(tmp_path, capfd):
    from vitqbench.runtime import create_session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    unused = helper.make_tensor("unused", TensorProto.FLOAT, [2], [1.0, 2.0])  # ORT warns while loading
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y], [unused])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    import onnxruntime as ort

    capfd.readouterr()
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # as the quantizer's own sessions do
    create_session(path)
    assert "\x1b[" not in capfd.readouterr().err


@pytest.mark.parametrize("dims", [[-32, 96], [2**40, 96]])
def test_initializer_dims_that_do_not_match_their_data_are_one_line(tiny_onnx, tmp_path, run_cli, dims):
    model = load_onnx(tiny_onnx)
    weight = next(i for i in model.graph.initializer if len(i.dims) == 2)
    weight.dims[:] = dims
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    out = tmp_path / "q.onnx"
    one_line_error(run_cli("quantize", bad, "--bits", "4", "-o", out), f"initializer {weight.name!r}", "damaged")
    assert not out.exists()


def test_a_model_whose_every_output_is_nan_still_gets_a_report(tiny_onnx, tmp_path, run_cli):
    """Quantization can break a model completely: the report is written, with its failures, and plots draw."""
    import numpy as np
    from onnx import numpy_helper

    model = load_onnx(tiny_onnx)
    for output in model.graph.output:  # every output times NaN
        raw = output.name + "_raw"
        for node in model.graph.node:
            node.output[:] = [raw if o == output.name else o for o in node.output]
            node.input[:] = [raw if i == output.name else i for i in node.input]
        model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), output.name + "_nan"))
        model.graph.node.append(helper.make_node("Mul", [raw, output.name + "_nan"], [output.name]))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    out = tmp_path / "out"
    result = run_cli(
        "eval", "-m", tiny_onnx, "-m", broken, "--id", "digits:test:n=30", "--fit", "digits:train:n=60",
        "--ood", "noise=noise:gaussian:n=20", "--plot-scores", "all", "--no-progress", "-o", out,
    )  # fmt: skip
    assert result.code == 2 and "cell(s) failed" in result.stderr
    report = (out / "report.md").read_text()
    assert "fit mahalanobis" in report and "non-finite" in report
    assert (out / "plots" / "roc_msp.png").stat().st_size > 0 and (out / "plots" / "hist_msp.png").stat().st_size > 0


def test_an_ood_set_with_the_id_sets_images_is_warned_about(tiny_onnx, tmp_path):
    from vitqbench.evaluate import EvalConfig, run_eval

    config = EvalConfig(
        models=[tiny_onnx], id="digits:test:n=30", ood={"same": "digits:test:n=30", "noise": "noise:gaussian:n=10"},
        scores="msp", cache_dir=tmp_path / "c", progress=False,
    )  # fmt: skip
    warnings = run_eval(config).warnings
    assert [w for w in warnings if "same images" in w] == [
        "OOD set same holds the same images as the ID set: its AUROC is 50 % by design"
    ]
