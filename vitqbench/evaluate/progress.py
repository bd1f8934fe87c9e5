"""A rich progress display for the eval matrix: one bar per running cell, with rate and ETA."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vitqbench.progress import progress_bar


class CellProgress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = progress_bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            enabled=enabled,
            transient=False,
        )

    def __enter__(self) -> CellProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def log(self, message: str) -> None:
        if self.enabled:
            self._progress.console.print(message, markup=False, highlight=False)

    @contextlib.contextmanager
    def cell(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        task = self._progress.add_task(description, total=total)

        def advance(n: int) -> None:
            self._progress.advance(task, n)

        try:
            yield advance
        finally:
            self._progress.update(task, visible=self.enabled)
