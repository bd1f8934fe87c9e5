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
    with pytest.raises(VitqbenchError, match="unknown provider 'npu'; choose one of cpu, cuda, tensorrt"):
        execution_target("npu")
    with pytest.raises(VitqbenchError, match="KEY=VALUE"):
        parse_provider_options(["device_id"])
    assert parse_provider_options(["device_id=1", "x = y"]) == {"device_id": "1", "x": "y"}
