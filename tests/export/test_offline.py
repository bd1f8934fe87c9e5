"""Offline: pretrained loads fail in seconds (one reachability probe, no retries), sweeps list them once."""

from __future__ import annotations

import socket
import time

import pytest

from vitqbench.errors import VitqbenchError
from vitqbench.export.model import WeightsUnavailable, build_model, hub_reachable


@pytest.fixture
def no_network(monkeypatch):
    """Networking disabled: every name lookup fails; HF_HUB_OFFLINE is not set, so the probe must find out."""
    from huggingface_hub import constants

    lookups: list[str] = []

    def refuse(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    hub_reachable.cache_clear()
    yield lookups
    hub_reachable.cache_clear()


def test_pretrained_load_without_network_fails_in_seconds(no_network):
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match="cannot load pretrained weights for deit_tiny_patch16_224.fb_in1k"):
        build_model("deit_tiny_patch16_224.fb_in1k")
    elapsed = time.perf_counter() - start
    assert no_network == ["huggingface.co"]  # the one probe; the hub itself never retried
    assert elapsed < 5  # the bound (0.7 s measured with two benchmarks running); the hub's retries took 57 s
    with pytest.raises(WeightsUnavailable, match="no network"):  # the probe's answer is kept
        build_model("deit_tiny_patch16_224.fb_in1k")
    assert len(no_network) == 1


def test_hf_hub_offline_is_honoured_without_probing(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket, "create_connection", pytest.fail)
    hub_reachable.cache_clear()
    try:
        assert hub_reachable() is False
    finally:
        hub_reachable.cache_clear()


SWEEP = """
[study]
name = "offline"
scores = ["msp"]

[[models]]
name = "deit_tiny_patch16_224.fb_in1k"

[[models]]
name = "vit_small_patch16_224.augreg_in1k"

[[precisions]]
name = "fp32"

[data]
id = "digits:test"

[data.ood]
noise = "noise:gaussian:n=10"
"""


def test_sweep_lists_unavailable_models_once_and_leaves_no_folder(tmp_path, run_cli, no_network):
    study = tmp_path / "s.toml"
    study.write_text(SWEEP)
    out = tmp_path / "out"
    result = run_cli("sweep", study, "--out", out, "--cache-dir", tmp_path / "cache", "--no-progress")
    assert no_network == ["huggingface.co"]  # one probe for the whole sweep, no retries per model
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].count("pretrained weights unavailable") == 1
    assert "2 model(s) (no network): deit_tiny_patch16_224.fb_in1k, vit_small_patch16_224.augreg_in1k" in lines[0]
    assert len(lines[0]) < 300
    assert not out.exists()


def test_unavailable_is_a_vitqbench_error():
    assert issubclass(WeightsUnavailable, VitqbenchError)
