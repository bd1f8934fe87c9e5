"""Output folders and files: checked writable before any work, locked against a second run."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile

import pytest
from clihelpers import one_line_error

from vitqbench import files
from vitqbench.errors import VitqbenchError


@pytest.fixture
def full_disk(monkeypatch):
    """Every new file fails as on a full filesystem (os.access still says the folder is writable)."""

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.tempfile, "TemporaryFile", no_space)


@pytest.mark.parametrize("command", ["eval", "sweep", "quantize", "export", "bench"])
def test_a_full_or_read_only_disk_is_one_line_before_any_work(tiny_onnx, tmp_path, run_cli, full_disk, command):
    out = tmp_path / "out"
    args = {
        "eval": ["eval", "-m", tiny_onnx, "--id", "noise:gaussian:n=4", "--out", out, "--cache-dir", tmp_path / "c"],
        "sweep": ["sweep", "--preset", "tiny", "--out", out, "--cache-dir", tmp_path / "c"],
        "quantize": ["quantize", tiny_onnx, "--bits", "4", "-o", out / "q.onnx"],
        "export": ["export", "deit_tiny_patch16_224", "--no-pretrained", "-o", out / "m.onnx"],
        "bench": ["bench", tiny_onnx, "--iters", "1", "--json", out / "b.json"],
    }[command]
    out.mkdir()
    one_line_error(run_cli(*args), "cannot write", "No space left on device")
    assert list(out.iterdir()) == []


def test_atomic_writes_turn_a_read_only_filesystem_into_one_line(tmp_path):
    def fill(_):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with pytest.raises(VitqbenchError, match="cannot write .*x.txt: Read-only file system"):
        with files.atomic_path(tmp_path / "x.txt") as tmp:
            fill(tmp)
    assert list(tmp_path.iterdir()) == []


HOLDER = """
import sys, time
from vitqbench.files import output_folder
with output_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_into_a_held_folder_is_refused_and_a_killed_holder_frees_it(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(VitqbenchError, match=f"is in use by pid {holder.pid}"):
            with files.output_folder(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with files.output_folder(out):  # the kernel dropped the dead holder's lock: nothing stale
        pass
    with files.output_folder(out):  # and this process released its own
        pass


def test_the_demo_holds_its_folder_from_the_start_and_the_lock_nests_in_one_process(tmp_path, run_cli):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli("demo", "--out", out, "--epochs", "1")  # refused before any training
        assert result.code == 2 and f"is in use by pid {holder.pid}" in result.stderr
        assert sorted(p.name for p in out.iterdir()) == [files.LOCK_NAME]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with files.output_folder(out), files.output_folder(out):  # the demo's eval inside the demo's hold
        pass


def test_the_probe_leaves_nothing_behind(tmp_path):
    with files.output_folder(tmp_path / "o") as out:
        assert sorted(p.name for p in out.iterdir()) == [files.LOCK_NAME]
    files.check_output_file(tmp_path / "f.txt")
    assert not (tmp_path / "f.txt").exists() and tempfile.gettempdir()
