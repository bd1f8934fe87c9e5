"""Execution targets: one normalized name, provider options in ORT's form and in the cache tag."""

import pytest

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.cache import outputs_key
from vitqbench.runtime import ExecutionTarget, execution_target, parse_provider_options


def test_provider_names_are_normalized_into_one_cache_key():
    upper, lower = execution_target("CPU"), execution_target(" cpu ")
    assert upper == lower == ExecutionTarget("cpu")
    assert outputs_key("ab" * 32, "data", upper.tag) == outputs_key("ab" * 32, "data", lower.tag)
    assert upper.tag == "cpu"  # no options: the tag is the bare name, as cache keys always held


def test_provider_options_change_the_tag_and_travel_in_ort_form():
    plain = execution_target("cuda")
    dev1 = execution_target("CUDA", {"device_id": 1})
    assert dev1.tag != plain.tag and dev1.tag.startswith("cuda-")
    assert execution_target("cuda", {"device_id": "1"}).tag == dev1.tag  # ORT takes strings: 1 == "1"
    assert dev1.providers[0] == ("CUDAExecutionProvider", {"device_id": "1"})
    assert dev1.providers[-1] == ("CPUExecutionProvider", {})  # CPU is the fallback for missing ops
    assert execution_target("cpu").providers == [("CPUExecutionProvider", {})]
    assert (plain.device, execution_target("cpu").device) == ("gpu", "cpu")


def test_bad_targets_are_one_line_errors():
    with pytest.raises(VitqbenchError, match="unknown provider .npu.; choose one of cpu, cuda, tensorrt, openvino"):
        execution_target("npu")
    with pytest.raises(VitqbenchError, match="KEY=VALUE"):
        parse_provider_options(["device_id"])
    assert parse_provider_options(["device_id=1", "x = y"]) == {"device_id": "1", "x": "y"}


def test_openvino_is_a_cpu_target_that_names_its_install_when_missing(monkeypatch):
    import builtins

    target = execution_target("OpenVINO")
    assert (target.runtime, target.device, target.tag) == ("openvino", "cpu", "openvino")
    with pytest.raises(VitqbenchError, match="not an ONNX Runtime provider"):
        target.providers  # noqa: B018 (calibration and optimize run on ONNX Runtime only)
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(VitqbenchError, match=r"provider openvino needs OpenVINO: pip install -e '\.\[openvino\]'"):
        target.check_available()


def test_openvino_runs_the_onnx_file_as_onnx_runtime_does(tiny_onnx, tmp_path, run_cli):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[openvino]')")
    import json

    import numpy as np

    from vitqbench.runtime import create_session

    x = np.random.default_rng(0).normal(0, 0.5, (3, 3, 32, 32)).astype(np.float32)
    ort_out = create_session(tiny_onnx, threads=1).run(["logits", "features"], {"pixel_values": x})
    ov = create_session(tiny_onnx, "openvino", threads=1)
    assert ov.get_providers() == ["OpenVINO-CPU"] and [i.name for i in ov.get_inputs()] == ["pixel_values"]
    for want, got in zip(ort_out, ov.run(["logits", "features"], {"pixel_values": x}), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    result = run_cli("bench", tiny_onnx, "--provider", "openvino", "--iters", "3", "--threads", "1", "--json",
                     tmp_path / "b.json")  # fmt: skip
    assert result.code == 0, result.stderr
    record = json.loads((tmp_path / "b.json").read_text())["records"][0]
    assert record["backend"] == "OpenVINO-CPU" and record["status"] == "ok"
    from vitqbench.evaluate import EvalConfig, run_eval

    def top1(target):
        config = EvalConfig(models=[tiny_onnx], id="digits:test:n=40", ood={"n": "noise:gaussian:n=10"}, scores="msp",
                            target=execution_target(target), cache_dir=tmp_path / "c", progress=False)  # fmt: skip
        return run_eval(config).id_metrics[0].top1

    assert top1("openvino") == top1("cpu")  # separate cache entries (the tag), the same predictions
