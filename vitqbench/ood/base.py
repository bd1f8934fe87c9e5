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
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vitqbench.errors import VitqbenchError
from vitqbench.files import atomic_path

SCORES: dict[str, type[Score]] = {}
_META = "__score__"

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
    """Every registered score with default parameters; those needing a fit set only if ``with_fit``."""
    return [name for name, cls in SCORES.items() if with_fit or not cls().needs_fit]


def load_score(path: str | Path) -> Score:
    """A fitted score saved by ``Score.save``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise VitqbenchError(f"cannot read fitted score state {path}: {exc}") from exc
    return Score.from_state_dict(arrays)


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


class Score:
    """Base class; subclasses are ``@register``-ed dataclasses that implement ``_score`` (and ``_fit``)."""

    name: ClassVar[str]
    uses_features: ClassVar[bool] = False  # reads features (True) or logits (False)
    needs_head: ClassVar[bool] = False  # fit needs the classifier head (W, b)
    needs_labels: ClassVar[bool] = False  # fit needs class labels of the fit set
    state: ClassVar[tuple[str, ...]] = ()  # fitted attributes, all numpy arrays
    # knn scores in float32 (BLAS speed); chunked scores keep the input dtype and convert per chunk.
    feature_dtype: ClassVar[type | None] = np.float64

    @property
    def needs_fit(self) -> bool:
        return bool(self.state)

    @property
    def is_fitted(self) -> bool:
        return all(getattr(self, k, None) is not None for k in self.state)

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def fit(
        self,
        features: np.ndarray | None,
        labels: np.ndarray | None = None,
        logits: np.ndarray | None = None,
        head: Head | None = None,
    ) -> Score:
        """Learn the state from ID fit-set outputs; a no-op for scores that need none."""
        if not self.needs_fit:
            return self
        n = None
        if self.uses_features:
            # A float32 score (KNN) fits in float32 too: its bank can be the size of a training set.
            fit_dtype = np.float32 if self.feature_dtype == np.float32 else np.float64
            features = as_matrix(f"fit features for {self.name!r}", features, fit_dtype)
            _check_finite(f"fit features for {self.name!r}", features)
            n = len(features)
        else:
            logits = as_matrix(f"fit logits for {self.name!r}", logits)
            _check_finite(f"fit logits for {self.name!r}", logits)
            n = len(logits)
        if self.needs_labels:
            labels = _check_labels(self.name, labels, n)
        if self.needs_head:
            head = _check_head(self.name, head, features.shape[1])
        self._fit(features=features, labels=labels, logits=logits, head=head)
        return self

    def score(self, logits: np.ndarray | None = None, features: np.ndarray | None = None) -> np.ndarray:
        """One score per sample (float64), higher = more in-distribution."""
        if logits is not None and features is not None and len(logits) != len(features):
            raise VitqbenchError(f"{len(logits)} logit rows but {len(features)} feature rows")
        if self.needs_fit and not self.is_fitted:
            raise VitqbenchError(f"score {self.name!r} needs a fit: give an ID fit set (--fit DATA)")
        if self.uses_features:
            return self._score(as_matrix(f"features for {self.name!r}", features, self.feature_dtype))
        return self._score(as_matrix(f"logits for {self.name!r}", logits))

    def _fit(self, *, features, labels, logits, head) -> None:  # pragma: no cover - stateful scores override
        raise NotImplementedError

    def _score(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def check_dim(self, x: np.ndarray, dim: int) -> None:
        if x.shape[1] != dim:
            raise VitqbenchError(f"score {self.name!r} was fitted on {dim}-d features, got {x.shape[1]}-d")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and fitted state as plain arrays (what ``save`` writes)."""
        if not self.is_fitted:
            raise VitqbenchError(f"score {self.name!r} is not fitted; nothing to save")
        meta = json.dumps({"name": self.name, "params": self.params()})
        return {_META: np.array(meta), **{k: np.asarray(getattr(self, k)) for k in self.state}}

    @staticmethod
    def from_state_dict(arrays: dict[str, np.ndarray]) -> Score:
        try:
            meta = json.loads(str(arrays[_META]))
            score = create_score(meta["name"], **meta["params"])
        except (KeyError, TypeError, ValueError) as exc:
            raise VitqbenchError(f"not a vitqbench score state ({exc})") from exc
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


def _check_finite(what: str, x: np.ndarray) -> None:
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise VitqbenchError(f"{what} contain {bad} non-finite values; cannot fit on them")


def _check_labels(name: str, labels: Any, n: int) -> np.ndarray:
    if labels is None:
        raise VitqbenchError(f"score {name!r} needs class labels for the fit set")
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise VitqbenchError(f"fit labels for {name!r} must be {n} integers, got {labels.dtype} {labels.shape}")
    if (labels < 0).any():
        raise VitqbenchError(f"fit labels for {name!r} must be >= 0 (the fit set needs class labels)")
    return labels.astype(np.int64)


def _check_head(name: str, head: Head | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if head is None:
        raise VitqbenchError(f"score {name!r} needs the classifier head (weight, bias) of the model")
    weight, bias = head
    weight = as_matrix(f"head weight for {name!r}", weight)
    if weight.shape[1] != dim:
        raise VitqbenchError(f"head weight for {name!r} has shape {weight.shape}; expected [classes, {dim}]")
    bias = np.zeros(len(weight)) if bias is None else np.asarray(bias, dtype=np.float64)
    if bias.shape != (len(weight),):
        raise VitqbenchError(f"head bias for {name!r} has shape {bias.shape}; expected ({len(weight)},)")
    _check_finite(f"head for {name!r}", weight)
    _check_finite(f"head bias for {name!r}", bias)
    return weight, bias
