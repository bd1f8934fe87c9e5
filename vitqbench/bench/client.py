"""The parent's handle on one worker process (see ``worker.py`` for the protocol)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import vitqbench


class WorkerFailed(Exception):
    """The worker reported an error, died, or did not answer in time (message: one line)."""


def worker_command(kind: str) -> list[str]:
    """The command that starts a worker; tests replace it to simulate a crashing runtime."""
    return [sys.executable, "-m", "vitqbench.bench.worker"]


def _worker_env(kind: str) -> dict[str, str]:
    env = dict(os.environ)
    # Workers must import this very vitqbench, installed or not.
    root = str(Path(vitqbench.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if kind == "torch":
        # OpenMP threads spin after each parallel region like ORT's do; idle, they would steal the
        # cores of whichever model runs next in the interleaved rounds.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _signal_name(code: int) -> str:
    try:
        return f" ({signal.Signals(-code).name})" if code < 0 else ""
    except ValueError:
        return ""


class WorkerProcess:
    def __init__(self, kind: str) -> None:
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty worker cannot block on it
        self.proc = subprocess.Popen(
            worker_command(kind),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=_worker_env(kind),
        )

    def request(self, op: str, timeout_s: float, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerFailed(self._death()) from None
        if not self._ready(timeout_s):
            self.close()
            raise WorkerFailed(f"no answer to {op!r} within {timeout_s:.0f} s; worker killed")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerFailed(self._death())
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerFailed(reply["error"])
        return reply

    def _ready(self, timeout_s: float) -> bool:
        if os.name == "nt":  # select() does not take pipes on Windows; wait without a limit there
            return True
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            return bool(sel.select(timeout_s))

    def _death(self) -> str:
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.close()
            return "worker stopped answering"
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        last = f": {lines[-1]}" if lines else ""
        return f"worker crashed with exit code {code}{_signal_name(code)}{last}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._stderr.close()
