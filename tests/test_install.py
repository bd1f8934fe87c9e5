"""Install: one ONNX Runtime wheel per extra, and one hint text wherever the user is told what to install."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vitqbench.errors import INSTALL_CPU, INSTALL_GPU, SWAP_TO_GPU, VitqbenchError

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_no_install_pulls_both_onnxruntime_wheels():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _names(project["dependencies"])
    extras = {k: _names(v) for k, v in project["optional-dependencies"].items()}
    assert not base & {"onnxruntime", "onnxruntime-gpu"}  # else the gpu extra would add a second wheel
    assert "onnxruntime" in extras["cpu"] and "onnxruntime-gpu" in extras["gpu"]
    for name, deps in extras.items():
        assert not {"onnxruntime", "onnxruntime-gpu"} <= deps, name


def test_readme_and_ci_use_the_same_install_texts():
    readme = (ROOT / "README.md").read_text()
    for text in (INSTALL_GPU, SWAP_TO_GPU):
        assert text in readme
    assert "pip install -e '.[cpu,dev,ray,openvino]'" in readme
    assert "pip install -e '.[cpu,dev,ray,openvino]'" in (ROOT / ".ci" / "run").read_text()
    assert INSTALL_CPU.removesuffix("]'") in readme


def test_unavailable_gpu_provider_names_the_swap():
    import onnxruntime as ort

    from vitqbench.runtime import execution_target

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(VitqbenchError, match=re.escape(SWAP_TO_GPU)):
        execution_target("cuda").check_available()


def test_missing_onnxruntime_is_one_line():
    code = "import sys; sys.modules['onnxruntime'] = None; from vitqbench.cli import main; main(['bench', 'x.onnx'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: ONNX Runtime is not installed: {INSTALL_CPU}, or {INSTALL_GPU} for CUDA"
