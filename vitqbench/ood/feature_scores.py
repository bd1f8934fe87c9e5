"""Scores read from the penultimate features, fitted on ID training outputs (OpenOOD's definitions).

knn and mahalanobis score queries in row chunks so memory stays bounded: each chunk's distance
matrix is about ``CHUNK_BYTES``, whatever the numbers of queries, fit samples and classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.special import logsumexp

from vitqbench.errors import VitqbenchError
from vitqbench.ood.base import Score, ScoreInputs, check_number, register

CHUNK_BYTES = 1 << 26


def _chunks(n: int, row_bytes: int):
    rows = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


@register
@dataclass
class Mahalanobis(Score):
    """Minus the smallest Mahalanobis distance (squared) to a class mean, with one covariance shared
    by all classes (Lee et al. 2018; OpenOOD's MDS without input noise). Classes absent from the
    fit set get no mean."""

    name = "mahalanobis"
    reads = ("features",)
    fit_reads = ("features", "labels")
    state = ("means_", "basis_", "inverse_eigenvalues_")
    feature_dtype = None

    def _fit(self, x: ScoreInputs) -> None:
        features, labels = x.features, x.labels
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        members = sparse.csr_matrix((np.ones(len(labels)), (inverse, np.arange(len(labels)))))
        self.means_ = np.asarray(members @ features) / counts[:, None]
        centered = features - self.means_[inverse]
        centered -= centered.mean(0)  # zero already, up to rounding; EmpiricalCovariance does the same
        covariance = centered.T @ centered / len(centered)
        # The precision is scipy's pinvh, as in scikit-learn's EmpiricalCovariance (OpenOOD's MDS):
        # eigen-directions with |eigenvalue| <= D * eps * max|eigenvalue| are dropped. LayerNorm'd
        # features lie in a hyperplane; np.linalg.pinv's 1e-15 cutoff kept that direction and let
        # float32 noise in it, weighted ~1e13, dominate the distances.
        values, vectors = np.linalg.eigh(covariance)
        keep = np.abs(values) > len(values) * np.finfo(np.float64).eps * np.abs(values).max()
        self.basis_, self.inverse_eigenvalues_ = vectors[:, keep], 1.0 / values[keep]

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.features
        self.check_dim(x, self.means_.shape[1])
        # d_c(x) = sum_i (z_i - m_ci)^2 / l_i in the kept eigenbasis (z = x V, m_c = mu_c V), expanded
        # so that no [N, C, D] array exists.
        weights = self.inverse_eigenvalues_
        means = self.means_ @ self.basis_
        means_sq = np.sum(means**2 * weights, axis=1)
        out = np.empty(len(x))
        for rows in _chunks(len(x), 8 * max(len(means), x.shape[1])):
            z = x[rows].astype(np.float64) @ self.basis_
            dist = np.sum(z**2 * weights, axis=1)[:, None] - 2.0 * ((z * weights) @ means.T) + means_sq[None, :]
            out[rows] = -dist.min(1)
        return out


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-10)  # OpenOOD's KNN normalizer


@register
@dataclass
class KNN(Score):
    """Minus the squared distance to the k-th nearest fit feature, all L2-normalized (Sun et al. 2022;
    OpenOOD's KNN, which reads faiss's squared L2). Exact search with float32 BLAS, in chunks."""

    name = "knn"
    reads = ("features",)
    fit_reads = ("features",)
    state = ("bank_",)
    feature_dtype = np.float32
    k: int = 50

    def __post_init__(self) -> None:
        check_number("knn k", self.k, 1, integer=True)

    def _fit(self, x: ScoreInputs) -> None:
        features = x.features
        if len(features) < self.k:
            raise VitqbenchError(f"knn with k={self.k} needs at least {self.k} fit samples, got {len(features)}")
        self.bank_ = _l2_normalize(features).astype(np.float32, copy=False)

    def _augmented_bank(self) -> np.ndarray:
        """[bank | |f|^2 / 2], built once per fitted (or loaded) bank."""
        cached = getattr(self, "_augmented", None)
        if cached is None or cached[0] is not self.bank_:
            half_sq = 0.5 * np.einsum("ij,ij->i", self.bank_, self.bank_, dtype=np.float64)
            cached = (self.bank_, np.hstack([self.bank_, half_sq[:, None].astype(np.float32)]))
            self._augmented = cached
        return cached[1]

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.features
        self.check_dim(x, self.bank_.shape[1])
        # |q - f|^2 = |q|^2 - 2 (q.f - |f|^2 / 2): the bracket comes out of one matmul with an extra
        # column, so each chunk costs a BLAS call and a selection, no further pass over the distances.
        bank = self._augmented_bank()
        queries = _l2_normalize(x).astype(np.float32, copy=False)
        out = np.empty(len(queries))
        for rows in _chunks(len(queries), 4 * len(bank)):
            q = queries[rows]
            closeness = np.hstack([q, np.full((len(q), 1), -1.0, np.float32)]) @ bank.T
            kth_largest = closeness.shape[1] - self.k
            closeness.partition(kth_largest, axis=1)  # in place: no second chunk-sized array
            kth = closeness[:, kth_largest]
            out[rows] = -(np.sum(q.astype(np.float64) ** 2, axis=1) - 2.0 * kth)
        return out


def _head_logits(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return features @ weight.T + bias


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
    ``dim=None`` picks the paper's subspace size for the feature width."""

    name = "vim"
    reads = ("features",)
    fit_reads = ("features", "head")
    state = ("weight_", "bias_", "origin_", "residual_basis_", "alpha_")
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
        self.alpha_ = np.array(_head_logits(features, weight, bias).max(1).mean() / virtual.mean())
        self.weight_, self.bias_, self.origin_, self.residual_basis_ = weight, bias, origin, residual_basis

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.features
        self.check_dim(x, self.weight_.shape[1])
        energy = logsumexp(_head_logits(x, self.weight_, self.bias_), axis=1)
        return energy - float(self.alpha_) * np.linalg.norm((x - self.origin_) @ self.residual_basis_, axis=1)


@register
@dataclass
class ReAct(Score):
    """Energy of the head's logits on features clipped from above at a percentile of all fit
    feature values (Sun et al. 2021; OpenOOD's ReAct)."""

    name = "react"
    reads = ("features",)
    fit_reads = ("features", "head")
    state = ("weight_", "bias_", "threshold_")
    percentile: float = 90.0

    def __post_init__(self) -> None:
        check_number("react percentile", self.percentile, 0.0, maximum=100.0)

    def _fit(self, x: ScoreInputs) -> None:
        self.weight_, self.bias_ = x.head
        self.threshold_ = np.array(np.percentile(x.features, self.percentile))

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.features
        self.check_dim(x, self.weight_.shape[1])
        clipped = np.minimum(x, float(self.threshold_))
        return logsumexp(_head_logits(clipped, self.weight_, self.bias_), axis=1)
