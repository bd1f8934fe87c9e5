"""Executors run a list of cells and return their results in the same order.

A cell may name, in ``requires``, keys of earlier cells of the same list; it runs only when all of
them succeeded (its result is then ``None``: a model whose ID cell failed spends nothing more).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from vitqbench.errors import Interrupted, VitqbenchError
from vitqbench.evaluate.cells import CellContext

EXECUTORS = ("inprocess", "ray")


class Cell(Protocol):
    key: str
    requires: tuple[str, ...]

    def run(self, ctx: CellContext) -> Any: ...

    def failed(self, exc: BaseException) -> Any: ...


class Executor(Protocol):
    name: str

    def run(self, cells: Sequence[Cell]) -> list[Any]: ...

    def close(self) -> None: ...


def succeeded(result: Any) -> bool:
    return result is not None and getattr(result, "failure", None) is None


class InProcessExecutor:
    """Cells one after the other in this process, in plan order (one ONNX Runtime session alive at a time)."""

    name = "inprocess"

    def __init__(self, context: CellContext):
        self.context = context

    def run(self, cells: Sequence[Cell]) -> list[Any]:
        done: dict[str, Any] = {}
        results = []
        try:
            for cell in cells:
                result = cell.run(self.context) if all(succeeded(done.get(k)) for k in cell.requires) else None
                done[cell.key] = result
                results.append(result)
        except (KeyboardInterrupt, Interrupted) as exc:
            exc.cells_done = sum(getattr(r, "ok", False) for r in results)
            raise
        finally:
            self.context.close()  # the last model's session goes before anything else runs
        return results

    def close(self) -> None:
        self.context.close()


def make_executor(
    name: str,
    context: CellContext,
    cache_root: Path,
    ray_address: str | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> Executor:
    """The executor called ``name`` (``inprocess`` or ``ray``), checked before any cell runs."""
    key = name.strip().lower()
    if key == "inprocess":
        return InProcessExecutor(context)
    if key == "ray":
        from vitqbench.evaluate.ray_executor import RayExecutor

        executor = RayExecutor(address=ray_address, threads=threads, progress=progress)
        try:
            executor.check_cache(cache_root)
        except BaseException:
            executor.close()
            raise
        return executor
    raise VitqbenchError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
