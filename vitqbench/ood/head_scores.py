"""Scores that recompute logits from the features with the model's classifier head (W, b): after
projecting out a subspace (vim), clipping (react), masking weights (dice) or shaping activations
(ash, scale), or to measure distances to decision boundaries (fdbd).

Logits are formed in row chunks (``base.chunks``), so no [N, classes] float64 array of a whole set exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from vitqbench.errors import VitqbenchError
from vitqbench.ood.base import Score, ScoreInputs, check_number, chunks, register


def _head_energy(
    features: np.ndarray, weight: np.ndarray, bias: np.ndarray, shape: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """logsumexp of ``shape(features) @ W^T + b`` per row (``shape`` acts on a float64 chunk)."""
    out = np.empty(len(features))
    for rows in chunks(len(features), 8 * max(len(weight), features.shape[1])):
        x = features[rows].astype(np.float64)
        out[rows] = logsumexp((x if shape is None else shape(x)) @ weight.T + bias, axis=1)
    return out


def _vim_default_dim(feature_dim: int) -> int:
    """Principal-space size from the ViM paper (Wang et al. 2022): 1000 / 512 / half the features."""
    if feature_dim >= 2048:
        return 1000
    if feature_dim >= 768:
        return 512
    return feature_dim // 2


@register
@dataclass
class ViM(Score):
    """Energy of the head's logits minus a virtual logit: the norm of the feature's residual outside
    the principal subspace, scaled by alpha fitted on the ID set (Wang et al. 2022; OpenOOD's VIM).
    ``dim=None`` picks the paper's subspace size for the feature width (OpenOOD's config: 256)."""

    name = "vim"
    reads = ("features",)
    fit_reads = ("features", "head")
    state = ("weight_", "bias_", "origin_", "residual_basis_", "alpha_")
    grid = {"dim": (256, 1000)}
    dim: int | None = None

    def __post_init__(self) -> None:
        if self.dim is not None:
            check_number("vim dim", self.dim, 1, integer=True)

    def _fit(self, x: ScoreInputs) -> None:
        features, (weight, bias) = x.features, x.head
        dim = _vim_default_dim(features.shape[1]) if self.dim is None else self.dim
        if not 1 <= dim < features.shape[1]:
            raise VitqbenchError(
                f"vim dim must be in [1, {features.shape[1] - 1}] for {features.shape[1]}-d features, got {dim}"
            )
        origin = -np.linalg.pinv(weight) @ bias
        centered = features - origin
        values, vectors = np.linalg.eigh(centered.T @ centered / len(centered))
        residual_basis = vectors[:, np.argsort(-values, kind="stable")[dim:]]
        virtual = np.linalg.norm(centered @ residual_basis, axis=1)
        self.alpha_ = np.array((features @ weight.T + bias).max(1).mean() / virtual.mean())
        self.weight_, self.bias_, self.origin_, self.residual_basis_ = weight, bias, origin, residual_basis

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.features
        self.check_dim(x, self.weight_.shape[1])
        virtual = np.linalg.norm((x - self.origin_) @ self.residual_basis_, axis=1)
        return _head_energy(x, self.weight_, self.bias_) - float(self.alpha_) * virtual


@register
@dataclass
class ReAct(Score):
    """Energy of the head's logits on features clipped from above at a percentile of all fit
    feature values (Sun et al. 2021; OpenOOD's ReAct, which takes the percentile on ID-val)."""

    name = "react"
    reads = ("features",)
    fit_reads = ("features", "head")
    state = ("weight_", "bias_", "threshold_")
    grid = {"percentile": (85, 90, 95, 99)}
    percentile: float = 90.0

    def __post_init__(self) -> None:
        check_number("react percentile", self.percentile, 0.0, maximum=100.0)

    def _fit(self, x: ScoreInputs) -> None:
        self.weight_, self.bias_ = x.head
        self.threshold_ = np.array(np.percentile(x.features, self.percentile))

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        self.check_dim(inputs.features, self.weight_.shape[1])
        threshold = float(self.threshold_)
        return _head_energy(inputs.features, self.weight_, self.bias_, lambda x: np.minimum(x, threshold))


@register
@dataclass
class DICE(Score):
    """Energy of logits from a sparsified head (Sun & Li 2022; OpenOOD's DICE): weights whose
    contribution ``mean fit feature * W`` is at or below its p-th percentile are zeroed."""

    name = "dice"
    reads = ("features",)
    fit_reads = ("features", "head")
    state = ("weight_", "bias_")
    default = False
    grid = {"p": (90,)}
    p: float = 90.0

    def __post_init__(self) -> None:
        check_number("dice p", self.p, 0.0, maximum=100.0)

    def _fit(self, x: ScoreInputs) -> None:
        weight, self.bias_ = x.head
        contribution = x.features.mean(0)[None, :] * weight
        self.weight_ = weight * (contribution > np.percentile(contribution, self.p))

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        self.check_dim(inputs.features, self.weight_.shape[1])
        return _head_energy(inputs.features, self.weight_, self.bias_)


def _kept(x: np.ndarray, percentile: float) -> tuple[np.ndarray, int]:
    """Indices of each row's k largest entries, k = D - round(D * percentile / 100) as OpenOOD's
    ash/scale compute it. Ties at the cut keep the lower feature index (torch.topk leaves it open)."""
    dim = x.shape[1]
    k = dim - int(np.round(dim * percentile / 100.0))
    if k < 1:
        raise VitqbenchError(f"percentile {percentile} keeps no feature of {dim}")
    return np.argsort(-x, axis=1, kind="stable")[:, :k], k


def _pruned(x: np.ndarray, top: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros_like(x)
    np.put_along_axis(out, top, np.take_along_axis(x, top, axis=1) if values is None else values, axis=1)
    return out


def _ash_b(x: np.ndarray, percentile: float) -> np.ndarray:
    top, k = _kept(x, percentile)
    return _pruned(x, top, np.broadcast_to(x.sum(1, keepdims=True) / k, top.shape))


def _ash_p(x: np.ndarray, percentile: float) -> np.ndarray:
    return _pruned(x, _kept(x, percentile)[0])


def _sharpening(x: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # s2 = 0: a NaN/inf score
        return np.exp(x.sum(1, keepdims=True) / pruned.sum(1, keepdims=True))


def _ash_s(x: np.ndarray, percentile: float) -> np.ndarray:
    pruned = _ash_p(x, percentile)
    return pruned * _sharpening(x, pruned)


ASH_VARIANTS = {"ash_b": _ash_b, "ash_p": _ash_p, "ash_s": _ash_s}


@register
@dataclass
class ASH(Score):
    """Energy of the head's logits on shaped features (Djurisic et al. 2023; OpenOOD's ASH): the
    largest (100 - percentile) % of each feature vector are kept and set to their row's sum spread
    evenly (``ash_b``, what OpenOOD's ASHNet applies), kept as they are (``ash_p``), or kept and
    scaled by exp(sum before / sum after) (``ash_s``); the rest are zeroed. The paper shapes
    post-ReLU activations; a ViT's features are signed, so the sums can be small or negative."""

    name = "ash"
    reads = ("features", "head")
    default = False
    grid = {"percentile": (65, 70, 75, 80, 85, 90, 95)}
    percentile: float = 90.0
    variant: str = "ash_b"

    def __post_init__(self) -> None:
        check_number("ash percentile", self.percentile, 0.0, maximum=100.0)
        if self.variant not in ASH_VARIANTS:
            raise VitqbenchError(f"ash variant must be one of {', '.join(ASH_VARIANTS)}, got {self.variant!r}")

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        shape = ASH_VARIANTS[self.variant]
        return _head_energy(inputs.features, *inputs.head, lambda x: shape(x, self.percentile))


@register
@dataclass
class SCALE(Score):
    """Energy of the head's logits on features scaled by exp(s1 / s2), s1 the row's sum and s2 the
    sum of its largest (100 - percentile) % (Xu et al. 2024; OpenOOD's SCALE): ASH-S's scaling
    without the pruning."""

    name = "scale"
    reads = ("features", "head")
    default = False
    grid = {"percentile": (65, 70, 75, 80, 85, 90, 95)}
    percentile: float = 85.0

    def __post_init__(self) -> None:
        check_number("scale percentile", self.percentile, 0.0, maximum=100.0)

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        return _head_energy(inputs.features, *inputs.head, lambda x: x * _sharpening(x, _ash_p(x, self.percentile)))


@register
@dataclass
class FDBD(Score):
    """Feature distance to decision boundaries (Liu & Qin 2024; OpenOOD's fDBD): the sum over classes
    c of |logit_pred - logit_c| / ||w_pred - w_c||, divided by the feature's distance to the fit
    set's mean feature (``distance_as_normalizer``, the paper's choice) or by its norm. The paper
    averages over the C - 1 other classes; OpenOOD sums (the same ranking; values C - 1 times
    larger): we sum, as OpenOOD does. The logits are the model's own; W is its head."""

    name = "fdbd"
    reads = ("logits", "features")
    fit_reads = ("features", "head")
    state = ("train_mean_", "boundary_norms_")
    default = False
    grid = {"distance_as_normalizer": (True, False)}
    distance_as_normalizer: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.distance_as_normalizer, bool):
            raise VitqbenchError(
                f"fdbd distance_as_normalizer must be true or false, got {self.distance_as_normalizer!r}"
            )

    def _fit(self, x: ScoreInputs) -> None:
        weight = x.head[0]
        self.train_mean_ = x.features.mean(0)
        norms = np.stack([np.linalg.norm(weight - row, axis=1) for row in weight])
        np.fill_diagonal(norms, 1.0)  # the predicted class's own term is 0 / 1
        self.boundary_norms_ = norms

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        logits, features = inputs.logits, inputs.features
        self.check_dim(features, len(self.train_mean_))
        if logits.shape[1] != len(self.boundary_norms_):
            raise VitqbenchError(
                f"fdbd was fitted on a {len(self.boundary_norms_)}-class head, got {logits.shape[1]} logits"
            )
        out = np.empty(len(logits))
        for rows in chunks(len(logits), 8 * logits.shape[1]):
            chunk = logits[rows]
            pred = np.argmax(chunk, axis=1)
            gaps = np.abs(chunk - chunk[np.arange(len(chunk)), pred][:, None])
            out[rows] = np.sum(gaps / self.boundary_norms_[pred], axis=1)
        center = self.train_mean_ if self.distance_as_normalizer else 0.0
        return out / np.linalg.norm(features - center, axis=1)
