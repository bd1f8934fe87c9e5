"""The cells of a study: content-addressed units of work whose result is a pure function of their key.

``OutputsCell`` runs one model over one dataset on one execution target (the expensive step, cached
in shards); ``ScoresCell`` turns one model's cached outputs into metrics and per-sample scores
(fitting, or loading, each score's state). A cell is plain data, so an executor can run it in this
process or on a Ray worker that sees the same cache folder; it catches its own errors and returns a
failure record, so a failed cell costs only that cell.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitqbench.errors import DiskFull, VitqbenchError
from vitqbench.metadata import ModelMetadata
from vitqbench.results import Failure
from vitqbench.runtime import ExecutionTarget


@dataclass(frozen=True)
class DataSource:
    """How any process loads a dataset again: its DATA spec and the options that shape it."""

    spec: str
    root: Path | None
    strict: bool
    seed: int


class CellContext:
    """What cells share within one process: loaded datasets and the one live ONNX Runtime session."""

    def __init__(self, datasets: dict[DataSource, Any] | None = None, progress: Any = None):
        self._datasets = dict(datasets or {})
        self._session: tuple[tuple[str, str, int | None], Any] | None = None
        self.progress = progress

    def dataset(self, source: DataSource) -> Any:
        if source not in self._datasets:
            from vitqbench.data import load_dataset

            self._datasets[source] = load_dataset(
                source.spec, data_root=source.root, strict=source.strict, seed=source.seed
            )
        return self._datasets[source]

    def session(self, path: str, target: ExecutionTarget, threads: int | None) -> tuple[Any, bool]:
        """The session for ``path``, reused while cells of one model follow each other; True if new.

        Only one session is alive at a time: idle sessions' spinning threads would steal cores.
        """
        from vitqbench import runtime

        key = (path, target.tag, threads)
        if self._session is None or self._session[0] != key:
            self._session = None  # release the previous model's session first
            self._session = (key, runtime.create_session(path, target, threads))
            return self._session[1], True
        return self._session[1], False

    def close(self) -> None:
        self._session = None

    def log(self, message: str) -> None:
        if self.progress is not None:
            self.progress.log(message)

    @contextlib.contextmanager
    def bar(self, description: str, total: int) -> Iterator[Callable[[int], None] | None]:
        if self.progress is None:
            yield None
        else:
            with self.progress.cell(description, total) as advance:
                yield advance


@dataclass
class OutputsResult:
    """What became of one outputs cell (the outputs themselves are in the cache under ``key``)."""

    key: str
    model: str
    dataset: str
    failure: Failure | None = None
    cached: bool = False
    computed: int = 0  # samples run now
    sessions: int = 0  # sessions opened for it
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class OutputsCell:
    """One model over one dataset on one execution target."""

    key: str
    model: str  # label
    dataset: str  # name
    role: str  # id, fit or ood
    model_path: str
    meta: ModelMetadata
    source: DataSource
    size: int
    target: ExecutionTarget
    threads: int | None
    batch_size: int
    cache_root: Path
    decode_cache: bool = True
    requires: tuple[str, ...] = ()  # keys of cells that must succeed first (a model's ID cell)

    def failed(self, exc: BaseException, stage: str = "inference") -> OutputsResult:
        return OutputsResult(self.key, self.model, self.dataset, Failure.of(self.model, self.dataset, stage, exc))

    def run(self, ctx: CellContext) -> OutputsResult:
        from vitqbench.evaluate.cache import OutputCache

        cache = OutputCache(self.cache_root)
        try:
            dataset = ctx.dataset(self.source)
            cached = self._cached(dataset, cache)
        except VitqbenchError as exc:
            return self.failed(exc, "check")
        if cached is not None:
            ctx.log(f"{self.model} x {self.dataset}: cached")
            return OutputsResult(self.key, self.model, self.dataset, cached=True, skipped=_skipped(dataset, cached))
        try:
            session, new = ctx.session(self.model_path, self.target, self.threads)
        except VitqbenchError as exc:
            return OutputsResult(self.key, self.model, self.dataset, Failure.of(self.model, None, "load-model", exc))
        try:
            out, computed = self._compute(ctx, session, dataset, cache)
        except DiskFull:  # a full disk would fail every later cell too: stop the run
            raise
        except Exception as exc:  # one broken cell must not cost the others
            return self.failed(exc)
        return OutputsResult(
            self.key,
            self.model,
            self.dataset,
            cached=computed == 0,  # another run finished the cell while this one waited for its lock
            computed=computed,
            sessions=int(new),
            skipped=_skipped(dataset, out),
        )

    def _cached(self, dataset: Any, cache: Any) -> Any:
        if self.role in {"id", "fit"} and dataset.labels is not None:
            from vitqbench.data import check_labels

            check_labels(dataset, self.meta.num_classes)  # the wrong model or the wrong ID set: say which
        cached = cache.get(self.key)
        if cached is not None and dataset.strict and cached.skipped:  # outputs cached by a lenient run
            index, reason = min(cached.skipped.items())
            raise VitqbenchError(f"unreadable image {dataset.paths[index]} ({reason}); --strict")
        return cached

    def _compute(self, ctx: CellContext, session: Any, dataset: Any, cache: Any) -> tuple[Any, int]:
        from vitqbench.evaluate.inference import run_cell

        with ctx.bar(f"{self.model} x {self.dataset}", self.size) as advance:
            return run_cell(
                session,
                self.meta,
                dataset,
                cache,
                self.key,
                batch_size=self.batch_size,
                image_cache_dir=self.cache_root,  # the data part keeps its decode cache in ROOT/decoded
                decode_cache=self.decode_cache,
                on_batch=advance,
            )


def _skipped(dataset: Any, out: Any) -> list[tuple[str, str]]:
    return [(str(dataset.paths[i]), str(r)) for i, r in sorted(out.skipped.items())]
