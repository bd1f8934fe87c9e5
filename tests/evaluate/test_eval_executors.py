"""Executors: the same study in process and as Ray tasks gives the same numbers; bad executor input."""

from __future__ import annotations

import json

import pytest

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate import EvalConfig, run_eval
from vitqbench.report import results_json

NUMBERS = ("id_metrics", "ood_metrics", "deltas", "datasets")


def _study(model, cache, executor: str) -> EvalConfig:
    return EvalConfig(
        models=[model],
        id="digits:test:n=40",
        fit="digits:train:n=60",
        ood={"noise": "noise:gaussian:n=30", "photos": "photos"},
        scores="msp,energy,mahalanobis",
        threads=1,
        batch_size=16,
        cache_dir=cache,
        progress=False,
        executor=executor,
    )


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, loopback) for the module's tests, started as a user's cluster would be."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_executor_gives_the_in_process_numbers(tiny_onnx, tmp_path, local_ray):
    local = json.loads(results_json(run_eval(_study(tiny_onnx, tmp_path / "c1", "inprocess"))))
    remote = run_eval(_study(tiny_onnx, tmp_path / "c2", "ray"))
    assert remote.settings["executor"] == "ray" and not remote.failures
    assert remote.cache["computed"] == 4 and remote.cache["hits"] == 0  # computed by the workers
    remote_doc = json.loads(results_json(remote))
    for part in NUMBERS:
        assert remote_doc[part] == local[part], part
    assert local["ood_metrics"]  # the comparison covered real rows


def test_unknown_executor_is_one_line_before_anything_runs(tiny_onnx, tmp_path, run_cli):
    with pytest.raises(VitqbenchError, match="unknown executor 'spark'; choose one of inprocess, ray"):
        run_eval(_study(tiny_onnx, tmp_path / "c", "spark"))
    assert not (tmp_path / "c").exists()
    out = tmp_path / "out"
    result = run_cli("eval", "-m", tiny_onnx, "--id", "digits:test:n=20", "--executor", "spark", "-o", out)
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_unreachable_ray_address_fails_in_seconds(tiny_onnx, tmp_path, run_cli):
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    start = time.monotonic()
    result = run_cli(
        "eval", "-m", tiny_onnx, "--id", "digits:test:n=20", "--scores", "msp", "--executor", "ray",
        "--ray-address", f"127.0.0.1:{port}", "--cache-dir", tmp_path / "c", "-o", out,
    )  # fmt: skip
    assert result.code == 2 and "cannot connect" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    assert time.monotonic() - start < 30


def test_a_cache_path_workers_cannot_write_is_reported():
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    from vitqbench.evaluate.ray_executor import _probe_cache

    assert "NotADirectoryError" in _probe_cache("/dev/null")  # what a worker sees on a path it cannot write
    assert _probe_cache("/tmp") is None


SWEEP = """
[[models]]
name = "deit_tiny_patch16_224"
label = "m"
pretrained = false
kwargs = { img_size = 32, patch_size = 8, depth = 1, embed_dim = 32, num_heads = 2, num_classes = 10 }

[[precisions]]
name = "w8a8"

[[precisions]]
name = "w4"

[data]
id = "digits:test:n=40"
calib = "digits:train"
calib_size = 16

[data.ood]
noise = "noise:gaussian:n=30"
"""


@pytest.mark.slow
def test_a_sweep_exports_and_quantizes_as_cells_on_ray_with_the_in_process_numbers(tmp_path, local_ray):
    from vitqbench.evaluate.sweep import SweepOptions, parse_sweep, run_sweep

    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    config = parse_sweep(tomllib.loads(SWEEP), "s.toml")
    docs = []
    for executor in ("inprocess", "ray"):
        out = tmp_path / executor
        options = SweepOptions(out, cache_dir=tmp_path / f"c-{executor}", pretrained=False, progress=False,
                               threads=1, executor=executor)  # fmt: skip
        results = run_sweep(config, options)
        assert not results.failures and [m.label for m in results.models] == ["m.fp32", "m.w8a8", "m.w4"]
        assert sorted(p.name for p in (out / "models").glob("*.onnx")) == ["m.fp32.onnx", "m.w4.onnx", "m.w8a8.onnx"]
        docs.append(json.loads(results_json(results)))
    for part in ("id_metrics", "ood_metrics", "deltas"):
        assert docs[1][part] == docs[0][part], part
    assert docs[1]["settings"]["executor"] == "ray" and docs[0]["deltas"]
