"""The score registry and the base class of every OOD score (higher score = more in-distribution).

A score is a small dataclass in the scikit-learn shape: parameters are its fields, ``fit`` learns
state into attributes ending in ``_`` (listed in ``state``), ``score`` maps arrays to one number per
sample. Fitted state is a dict of plain numpy arrays, saved as ``.npz`` so eval fits once per model
and fit set, not once per OOD set.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vitqbench.errors import VitqbenchError
from vitqbench.files import atomic_path

SCORES: dict[str, type[Score]] = {}
_META = "__score__"
# Scores that compare each query with many rows (fit samples, classes) work in row chunks whose
# [rows, many] matrix is about this size, whatever the numbers of queries, fit samples and classes.
CHUNK_BYTES = 1 << 26

Head = tuple[np.ndarray, np.ndarray | None]  # (W [classes, D], b [classes]) as metadata.read_head gives


def register(cls: type[Score]) -> type[Score]:
    """Class decorator: make a score available to ``create_score`` under ``cls.name``."""
    SCORES[cls.name] = cls
    return cls


def create_score(name: str, **params: Any) -> Score:
    """A score by registry name, e.g. ``create_score("knn", k=50)``."""
    if name not in SCORES:
        raise VitqbenchError(f"unknown score {name!r}; choose from {', '.join(SCORES)}")
    try:
        return SCORES[name](**params)
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(SCORES[name])) or "none"
        raise VitqbenchError(f"bad parameters {params} for score {name!r} (parameters: {known})") from exc


def default_score_names(with_fit: bool = True) -> list[str]:
    """The scores an eval runs when none are named (those needing a fit set only if ``with_fit``);
    the others (``Score.default`` False) run when named in ``--scores``."""
    return [name for name, cls in SCORES.items() if cls.default and (with_fit or not cls().needs_fit)]


def load_score(path: str | Path) -> Score:
    """A fitted score saved by ``Score.save``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # EOFError: a zero-length file
        raise VitqbenchError(f"cannot read fitted score state {path}: {exc}") from exc
    return Score.from_state_dict(arrays)


def chunks(n: int, row_bytes: int):
    """Row slices of ``range(n)`` whose per-chunk matrices take about ``CHUNK_BYTES``."""
    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def as_matrix(what: str, x: Any, dtype: type | None = np.float64) -> np.ndarray:
    """``x`` as a non-empty 2-D float array (``dtype=None``: keep a float dtype), or one clear error."""
    if x is None:
        raise VitqbenchError(f"{what} are required")
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise VitqbenchError(f"{what} must be a non-empty [N, D] array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise VitqbenchError(f"{what} must be numeric, got dtype {x.dtype}")
    if dtype is None:
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return x.astype(dtype, copy=False)


def check_number(
    name: str,
    value: Any,
    minimum: float,
    *,
    integer: bool = False,
    open_min: bool = False,
    maximum: float | None = None,
) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not np.isfinite(value):
        raise VitqbenchError(f"{name} must be a{'n integer' if integer else ' number'}, got {value!r}")
    if value < minimum or (open_min and value == minimum) or (maximum is not None and value > maximum):
        bound = f"{'>' if open_min else '>='} {minimum}"
        bound += f" and <= {maximum}" if maximum is not None else ""
        raise VitqbenchError(f"{name} must be {bound}, got {value!r}")


@dataclass(frozen=True)
class ScoreInputs:
    """What a score may read about one set of samples: the model's outputs (logits [N, classes],
    penultimate features [N, D]), the samples' class labels [N] and the model's classifier head.
    A score reads only the fields it declares (``Score.reads`` to score, ``Score.fit_reads`` to fit)."""

    logits: np.ndarray | None = None
    features: np.ndarray | None = None
    labels: np.ndarray | None = None
    head: Head | None = None
    # From models exported with ``vitqbench export --attention``: each block's per-head attention
    # entropy [N, depth, heads] (nats) and the class token's attention rollout over the patch tokens [N, patches].
    attn_entropy: np.ndarray | None = None
    attn_rollout: np.ndarray | None = None


INPUTS = tuple(f.name for f in dataclasses.fields(ScoreInputs))
# Per-sample arrays a score may read; a sample with a non-finite value in one it reads scores NaN.
SAMPLE_ARRAYS = ("logits", "features", "attn_entropy", "attn_rollout")
ATTENTION_INPUTS = ("attn_entropy", "attn_rollout")


class Score:
    """Base class; subclasses are ``@register``-ed dataclasses that implement ``_score`` (and ``_fit``)."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ("logits",)  # ScoreInputs fields that ``score`` reads
    fit_reads: ClassVar[tuple[str, ...]] = ()  # ScoreInputs fields that ``fit`` reads from the fit set
    state: ClassVar[tuple[str, ...]] = ()  # fitted attributes, all numpy arrays
    # Part of the fitted state's cache key: bump it when ``_fit`` changes, so cached state is refitted.
    version: ClassVar[int] = 1
    default: ClassVar[bool] = True  # run when no --scores are given
    # OpenOOD's ``postprocessor_sweep`` for this score: parameter -> values searched by --tune.
    grid: ClassVar[dict[str, tuple[Any, ...]]] = {}
    # knn scores in float32 (BLAS speed); chunked scores keep the input dtype and convert per chunk.
    feature_dtype: ClassVar[type | None] = np.float64

    @property
    def needs_fit(self) -> bool:
        return bool(self.state)

    @property
    def is_fitted(self) -> bool:
        return all(getattr(self, k, None) is not None for k in self.state)

    @property
    def needs_head(self) -> bool:
        """Whether the classifier head must be in the bundle (to fit, or to score)."""
        return "head" in self.reads or (self.needs_fit and "head" in self.fit_reads)

    @property
    def needs_labels(self) -> bool:
        """Whether the fit set must carry class labels."""
        return self.needs_fit and "labels" in self.fit_reads

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def fit(self, inputs: ScoreInputs) -> Score:
        """Learn the state from the ID fit set; a no-op for scores that need none."""
        if not self.needs_fit:
            return self
        # A float32 score (KNN) fits in float32 too: its bank can be the size of a training set.
        dtype = np.float32 if self.feature_dtype == np.float32 else np.float64
        self._fit(_checked(self.name, inputs, self.fit_reads, "fit ", dtype, fit=True))
        return self

    def score(self, inputs: ScoreInputs) -> np.ndarray:
        """One score per sample (float64), higher = more in-distribution.

        A sample with a NaN or infinite value in what the score reads (a broken quantized model)
        scores NaN, which the metrics rank most-OOD and count; it never disturbs the other samples.
        """
        if self.needs_fit and not self.is_fitted:
            raise VitqbenchError(f"score {self.name!r} needs a fit: give an ID fit set (--fit DATA)")
        x = _checked(self.name, inputs, self.reads, "", self.feature_dtype)
        present = {key: getattr(x, key) for key in SAMPLE_ARRAYS if getattr(x, key) is not None}
        bad = np.zeros(_rows(x), dtype=bool)
        for a in present.values():
            bad |= ~np.isfinite(a.reshape(len(a), -1)).all(1)
        if not bad.any():
            return np.asarray(self._score(x), dtype=np.float64)
        clean = {
            key: np.where(bad.reshape(-1, *[1] * (a.ndim - 1)), 0, a).astype(a.dtype) for key, a in present.items()
        }
        out = np.asarray(self._score(dataclasses.replace(x, **clean)), dtype=np.float64)
        out[bad] = np.nan
        return out

    def _fit(self, x: ScoreInputs) -> None:  # pragma: no cover - stateful scores override
        raise NotImplementedError

    def _score(self, x: ScoreInputs) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def check_dim(self, x: np.ndarray, dim: int) -> None:
        if x.shape[1] != dim:
            raise VitqbenchError(f"score {self.name!r} was fitted on {dim}-d features, got {x.shape[1]}-d")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and fitted state as plain arrays (what ``save`` writes)."""
        if not self.is_fitted:
            raise VitqbenchError(f"score {self.name!r} is not fitted; nothing to save")
        meta = json.dumps({"name": self.name, "version": self.version, "params": self.params()})
        return {_META: np.array(meta), **{k: np.asarray(getattr(self, k)) for k in self.state}}

    @staticmethod
    def from_state_dict(arrays: dict[str, np.ndarray]) -> Score:
        try:
            meta = json.loads(str(arrays[_META]))
            score = create_score(meta["name"], **meta["params"])
        except (KeyError, TypeError, ValueError) as exc:
            raise VitqbenchError(f"not a vitqbench score state ({exc})") from exc
        if meta.get("version", 1) != score.version:
            raise VitqbenchError(
                f"score state for {score.name!r} is version {meta.get('version', 1)}, not {score.version}"
            )
        missing = [k for k in score.state if k not in arrays]
        if missing:
            raise VitqbenchError(f"score state for {score.name!r} lacks {', '.join(missing)}")
        for k in score.state:
            setattr(score, k, arrays[k])
        return score

    def save(self, path: str | Path) -> None:
        arrays = self.state_dict()
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _rows(x: ScoreInputs) -> int:
    return next(len(getattr(x, k)) for k in (*SAMPLE_ARRAYS, "labels") if getattr(x, k) is not None)


def _checked(name: str, x: ScoreInputs, reads: tuple[str, ...], what: str, dtype, fit: bool = False) -> ScoreInputs:
    """The fields ``reads`` of ``x`` checked and converted (others dropped), or one clear error."""
    if not isinstance(x, ScoreInputs):
        raise VitqbenchError(f"score {name!r} takes a ScoreInputs bundle, got {type(x).__name__}")
    out: dict[str, Any] = {}
    for key in ("logits", "features"):
        if key in reads:
            label = f"{what}{key} for {name!r}"
            out[key] = as_matrix(label, getattr(x, key), np.float64 if key == "logits" else dtype)
            if fit:
                _check_finite(label, out[key])
    for key in ATTENTION_INPUTS:
        if key in reads:
            out[key] = _attention_array(name, key, getattr(x, key), 3 if key == "attn_entropy" else 2)
            if fit:
                _check_finite(f"{what}{key} for {name!r}", out[key])
    counts = {k: len(v) for k, v in out.items()}
    if len(set(counts.values())) > 1:
        raise VitqbenchError(f"score {name!r} got " + " but ".join(f"{n} {k} rows" for k, n in counts.items()))
    if "labels" in reads:
        out["labels"] = _check_labels(name, x.labels, next(iter(counts.values()), None))
    if "head" in reads:
        dim = out["features"].shape[1] if "features" in out else None
        out["head"] = _check_head(name, x.head, dim)
    return ScoreInputs(**out)


def _attention_array(name: str, key: str, x: Any, ndim: int) -> np.ndarray:
    """An attention output as a float64 array of ``ndim`` dimensions, or one line naming the export flag."""
    if x is None:
        raise VitqbenchError(
            f"score {name!r} reads the attention output {key}, which this model lacks: "
            "export it with `vitqbench export --attention`"
        )
    x = np.asarray(x)
    if x.ndim != ndim or 0 in x.shape or not np.issubdtype(x.dtype, np.number):
        raise VitqbenchError(f"{key} for {name!r} must be a non-empty numeric {ndim}-D array, got {x.dtype} {x.shape}")
    return x.astype(np.float64, copy=False)


def _check_finite(what: str, x: np.ndarray) -> None:
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise VitqbenchError(f"{what} contain {bad} non-finite values; cannot fit on them")


def _check_labels(name: str, labels: Any, n: int | None) -> np.ndarray:
    if labels is None:
        raise VitqbenchError(f"score {name!r} needs class labels for the fit set (it has none)")
    labels = np.asarray(labels)
    n = len(labels) if n is None and labels.ndim == 1 else n
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise VitqbenchError(f"fit labels for {name!r} must be {n} integers, got {labels.dtype} {labels.shape}")
    if (labels < 0).any():
        raise VitqbenchError(f"fit labels for {name!r} must be >= 0 (the fit set needs class labels)")
    return labels.astype(np.int64)


def _check_head(name: str, head: Head | None, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    if head is None:
        raise VitqbenchError(f"score {name!r} needs the model's classifier head (weight, bias), which is missing")
    weight, bias = head
    weight = as_matrix(f"head weight for {name!r}", weight)
    if dim is not None and weight.shape[1] != dim:
        raise VitqbenchError(f"head weight for {name!r} has shape {weight.shape}; expected [classes, {dim}]")
    bias = np.zeros(len(weight)) if bias is None else np.asarray(bias, dtype=np.float64)
    if bias.shape != (len(weight),):
        raise VitqbenchError(f"head bias for {name!r} has shape {bias.shape}; expected ({len(weight)},)")
    _check_finite(f"head for {name!r}", weight)
    _check_finite(f"head bias for {name!r}", bias)
    return weight, bias
