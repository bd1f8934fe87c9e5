"""Cells as Ray tasks, on a local Ray or an existing cluster (``--executor ray``, ``--ray-address``).

Every worker must see the cache folder at the same path (a shared filesystem): cells read and write
their outputs there, atomically, as in process. A task asks for the CPUs its ONNX Runtime intra-op
threads use (and a GPU on a GPU target); a task that raises or whose worker dies is a failed cell;
Ctrl-C cancels the outstanding tasks.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitqbench.errors import Interrupted, VitqbenchError, first_line
from vitqbench.evaluate.cells import CellContext
from vitqbench.evaluate.executor import Cell, succeeded
from vitqbench.runtime import physical_cores

CONNECT_TIMEOUT_S = 5.0
_WORKER_CONTEXT: CellContext | None = None  # per worker process: its datasets and its one session


def _run_cell(cell: Cell) -> Any:
    global _WORKER_CONTEXT
    if _WORKER_CONTEXT is None:
        _WORKER_CONTEXT = CellContext()
    return cell.run(_WORKER_CONTEXT)


def _probe_cache(folder: str) -> str | None:
    """Write and remove a file in the cache folder, as a worker; the error when that fails."""
    path = Path(folder) / f".ray-probe-{uuid.uuid4().hex}"
    try:
        path.write_bytes(b"")
        path.unlink()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, threads: int | None = None, progress: bool = False):
        try:
            import ray
        except ImportError:
            raise VitqbenchError("--executor ray needs Ray: pip install 'vitqbench[ray]'") from None
        self._ray = ray
        self._started = False
        if address is not None:
            _check_reachable(address)
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            except Exception as exc:  # Ray's own ConnectionError and RuntimeError classes
                raise VitqbenchError(f"cannot start or join Ray ({address or 'local'}): {first_line(exc)}") from exc
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.threads = max(1, min(threads or physical_cores(), cpus))
        self.progress = progress
        self._remote = ray.remote(max_retries=0)(_run_cell)

    def check_cache(self, folder: Path) -> None:
        """Workers must be able to write the cache: one line, before any cell runs, if they cannot."""
        error = self._ray.get(self._ray.remote(_probe_cache).options(num_cpus=0).remote(str(folder)))
        if error is not None:
            raise VitqbenchError(f"the cache folder {folder} is not writable from Ray workers ({error}); "
                                 "the cache must be on a filesystem every worker sees")  # fmt: skip

    def run(self, cells: Sequence[Cell]) -> list[Any]:
        ray = self._ray
        results: dict[str, Any] = {}
        pending: dict[Any, Cell] = {}
        waiting = list(cells)
        try:
            while waiting or pending:
                waiting = self._submit_ready(waiting, results, pending)
                if not pending:
                    continue
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0])
                try:
                    results[cell.key] = ray.get(ready[0])
                except Exception as exc:  # the task raised or its worker died: a failed cell
                    results[cell.key] = cell.failed(exc)
                self._log(cell, results[cell.key], len(results), len(cells))
        except (KeyboardInterrupt, Interrupted) as exc:
            exc.cells_done = sum(getattr(r, "ok", False) for r in results.values())
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return [results.get(c.key) for c in cells]

    def _submit_ready(self, waiting: list[Cell], results: dict[str, Any], pending: dict[Any, Cell]) -> list[Cell]:
        later = []
        for cell in waiting:
            if not all(k in results for k in cell.requires):
                later.append(cell)
            elif all(succeeded(results[k]) for k in cell.requires):
                pending[self._submit(cell)] = cell
            else:
                results[cell.key] = None  # its ID cell failed: nothing more to spend on this model
        return later

    def _submit(self, cell: Cell) -> Any:
        threads = getattr(cell, "threads", 1)
        target = getattr(cell, "target", None)
        if hasattr(cell, "threads"):
            threads = threads or self.threads
            cell = dataclasses.replace(cell, threads=threads)
        gpus = 1 if target is not None and target.device == "gpu" else 0
        return self._remote.options(num_cpus=threads, num_gpus=gpus).remote(cell)

    def _log(self, cell: Cell, result: Any, done: int, total: int) -> None:
        if not self.progress:
            return
        state = "failed" if not succeeded(result) else "cached" if getattr(result, "cached", False) else "done"
        print(f"[{done}/{total}] {cell.key[:60]}: {state}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def _check_reachable(address: str) -> None:
    """An unreachable cluster fails in seconds, not after Ray's minute of retries."""
    if address in ("auto", "local"):
        return
    host_port = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise VitqbenchError(f"--ray-address {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise VitqbenchError(f"--ray-address {address}: cannot connect ({exc.strerror or exc})") from None
