"""Ctrl-C and kills: one line and exit 130 (no worker tracebacks); decode workers die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


def _start_eval(model: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    cache = tmp_path / "cache"
    args = ["eval", "-m", model, "--id", "digits:test:n=60", "--ood", "noise=noise:gaussian:n=60000"]
    args += ["--scores", "msp", "-o", tmp_path / "out", "--cache-dir", cache, "--no-progress", "--no-decode-cache"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitqbench.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a job
    )
    return proc, cache


def _wait_for_second_cell(proc: subprocess.Popen, cache: Path, timeout: float = 240) -> list[psutil.Process]:
    """Block until the ID cell is finished and the noise cell's decode workers run; the workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        finished = list((cache / "outputs").glob("*.npz")) if (cache / "outputs").is_dir() else []
        workers = psutil.Process(proc.pid).children(recursive=True)
        if finished and len(workers) >= 4:  # resource tracker, forkserver and both decode workers
            time.sleep(1)  # past their start-up (see the report: Ctrl-C during it is a known race)
            return psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the eval did not reach its second cell in time")


def _gone_within(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    alive = processes
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    return alive


def test_ctrl_c_to_the_process_group_is_one_line_and_exit_130(tiny_onnx, tmp_path):
    proc, cache = _start_eval(tiny_onnx, tmp_path)
    workers = _wait_for_second_cell(proc, cache)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip() == "interrupted; 1 cell(s) kept, re-run to resume", err
    assert not _gone_within(workers, 30)


def test_decode_workers_die_with_a_killed_parent(tiny_onnx, tmp_path):
    proc, cache = _start_eval(tiny_onnx, tmp_path)
    workers = _wait_for_second_cell(proc, cache)
    proc.kill()  # SIGKILL to the main process only: it cannot shut its pool down
    proc.wait(timeout=60)
    assert not _gone_within(workers, 30), "worker, forkserver or resource tracker outlived its parent"
