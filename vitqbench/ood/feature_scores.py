"""Scores that compare a sample's penultimate features with statistics of the ID fit set: class
Gaussians (mahalanobis, rmds), nearest neighbours (knn, nnguide), class patterns (she).

Distances are computed in row chunks (``base.chunks``), so no [queries, fit samples] matrix exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.special import logsumexp

from vitqbench.errors import VitqbenchError
from vitqbench.ood.base import Score, ScoreInputs, check_number, chunks, register


def _class_means(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes present, their mean features, each row's index into them)."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = sparse.csr_matrix((np.ones(len(labels)), (inverse, np.arange(len(labels)))))
    return classes, np.asarray(members @ features) / counts[:, None], inverse


def _precision_basis(centered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenbasis and inverse eigenvalues of the covariance of ``centered`` rows: the precision matrix
    of scikit-learn's EmpiricalCovariance (OpenOOD's MDS and RMDS) as ``V diag(1/l) V^T``.

    Like scipy's pinvh there, eigen-directions with |l| <= D * eps * max|l| are dropped. LayerNorm'd
    features lie in a hyperplane; np.linalg.pinv's 1e-15 cutoff kept that direction and let float32
    noise in it, weighted ~1e13, dominate the distances.
    """
    centered = centered - centered.mean(0)  # zero already for class-centred rows, up to rounding
    values, vectors = np.linalg.eigh(centered.T @ centered / len(centered))
    keep = np.abs(values) > len(values) * np.finfo(np.float64).eps * np.abs(values).max()
    return vectors[:, keep], 1.0 / values[keep]


def _closest_sq_distance(x: np.ndarray, means: np.ndarray, basis: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """min_c (x - m_c)^T P (x - m_c) for P = basis diag(weights) basis^T, in row chunks.

    In the eigenbasis (z = x V, m_c V) it is sum_i (z_i - m_ci)^2 w_i, expanded so that no
    [N, C, D] array exists.
    """
    means = means @ basis
    means_sq = np.sum(means**2 * weights, axis=1)
    out = np.empty(len(x))
    for rows in chunks(len(x), 8 * max(len(means), x.shape[1])):
        z = x[rows].astype(np.float64) @ basis
        dist = np.sum(z**2 * weights, axis=1)[:, None] - 2.0 * ((z * weights) @ means.T) + means_sq[None, :]
        out[rows] = dist.min(1)
    return out


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
        _, self.means_, inverse = _class_means(x.features, x.labels)
        if len(x.labels) <= len(self.means_):  # no sample left over: a zero covariance, a silent 50 % AUROC
            raise VitqbenchError(
                f"{self.name}: the fit set has {len(x.labels)} samples for {len(self.means_)} classes; "
                "its class-shared covariance needs more samples than classes"
            )
        self.basis_, self.inverse_eigenvalues_ = _precision_basis(x.features - self.means_[inverse])

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        self.check_dim(inputs.features, self.means_.shape[1])
        return -_closest_sq_distance(inputs.features, self.means_, self.basis_, self.inverse_eigenvalues_)


@register
@dataclass
class RMDS(Mahalanobis):
    """Relative Mahalanobis distance (Ren et al. 2021; OpenOOD's RMDS): ``max_c -d_c(x) + d_0(x)``,
    the mahalanobis score plus the distance d_0 to one Gaussian fitted on the whole fit set (its
    mean, its own covariance), which removes what every class shares. Classes absent from the fit
    set get no mean (OpenOOD's loop over all classes would give them NaN)."""

    name = "rmds"
    state = (*Mahalanobis.state, "background_mean_", "background_basis_", "background_inverse_eigenvalues_")
    default = False

    def _fit(self, x: ScoreInputs) -> None:
        super()._fit(x)
        self.background_mean_ = x.features.mean(0, keepdims=True)
        self.background_basis_, self.background_inverse_eigenvalues_ = _precision_basis(
            x.features - self.background_mean_
        )

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        background = _closest_sq_distance(
            inputs.features, self.background_mean_, self.background_basis_, self.background_inverse_eigenvalues_
        )
        return super()._score(inputs) + background


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-10)  # OpenOOD's KNN normalizer


def _top_k_mean(similarity: np.ndarray, k: int, *, kth_only: bool = False) -> np.ndarray:
    """Per row, the k-th largest entry (``kth_only``) or the mean of the k largest; partitions in place."""
    kth = similarity.shape[1] - k
    similarity.partition(kth, axis=1)
    return similarity[:, kth] if kth_only else similarity[:, kth:].mean(1, dtype=np.float64)


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
    grid = {"k": (50, 100, 200, 500, 1000)}
    k: int = 50

    def __post_init__(self) -> None:
        check_number("knn k", self.k, 1, integer=True)

    def _fit(self, x: ScoreInputs) -> None:
        if len(x.features) < self.k:
            raise VitqbenchError(f"knn with k={self.k} needs at least {self.k} fit samples, got {len(x.features)}")
        self.bank_ = _l2_normalize(x.features).astype(np.float32, copy=False)

    def _augmented_bank(self) -> np.ndarray:
        """[bank | |f|^2 / 2], built once per fitted (or loaded) bank."""
        cached = getattr(self, "_augmented", None)
        if cached is None or cached[0] is not self.bank_:
            half_sq = 0.5 * np.einsum("ij,ij->i", self.bank_, self.bank_, dtype=np.float64)
            cached = (self.bank_, np.hstack([self.bank_, half_sq[:, None].astype(np.float32)]))
            self._augmented = cached
        return cached[1]

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        self.check_dim(inputs.features, self.bank_.shape[1])
        # |q - f|^2 = |q|^2 - 2 (q.f - |f|^2 / 2): the bracket comes out of one matmul with an extra
        # column, so each chunk costs a BLAS call and a selection, no further pass over the distances.
        bank = self._augmented_bank()
        queries = _l2_normalize(inputs.features).astype(np.float32, copy=False)
        out = np.empty(len(queries))
        for rows in chunks(len(queries), 4 * len(bank)):
            q = queries[rows]
            closeness = np.hstack([q, np.full((len(q), 1), -1.0, np.float32)]) @ bank.T
            kth = _top_k_mean(closeness, self.k, kth_only=True)
            out[rows] = -(np.sum(q.astype(np.float64) ** 2, axis=1) - 2.0 * kth)
        return out


@register
@dataclass
class NNGuide(Score):
    """Nearest-neighbour guidance (Park et al. 2023; OpenOOD's NNGuide): the query's energy times the
    mean of its K largest inner products with a bank of fit samples, each an L2-normalized feature
    scaled by its own energy. The bank is a fixed random ``alpha`` fraction of the fit set (seed 0;
    OpenOOD takes the first batches of its shuffled train loader). Exact search, float32, in chunks."""

    name = "nnguide"
    reads = ("logits", "features")
    fit_reads = ("logits", "features")
    state = ("bank_",)
    feature_dtype = np.float32
    default = False
    grid = {"K": (100,), "alpha": (0.01,)}
    K: int = 100  # noqa: N815 - OpenOOD's name
    alpha: float = 0.01

    def __post_init__(self) -> None:
        check_number("nnguide K", self.K, 1, integer=True)
        check_number("nnguide alpha", self.alpha, 0.0, open_min=True, maximum=1.0)

    def _fit(self, x: ScoreInputs) -> None:
        n = len(x.features)
        size = int(np.ceil(self.alpha * n))
        if size < self.K:
            raise VitqbenchError(
                f"nnguide with alpha={self.alpha} keeps {size} of {n} fit samples, fewer than K={self.K}: "
                "raise alpha or lower K"
            )
        rows = np.sort(np.random.default_rng(0).choice(n, size, replace=False))
        energy = logsumexp(x.logits[rows], axis=1)
        self.bank_ = (_l2_normalize(x.features[rows]) * energy[:, None]).astype(np.float32)

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        self.check_dim(inputs.features, self.bank_.shape[1])
        queries = _l2_normalize(inputs.features).astype(np.float32, copy=False)
        guidance = np.empty(len(queries))
        for rows in chunks(len(queries), 4 * len(self.bank_)):
            guidance[rows] = _top_k_mean(queries[rows] @ self.bank_.T, self.K)
        return guidance * logsumexp(inputs.logits, axis=1)


SHE_METRICS = ("inner_product", "euclidean", "cosine")


@register
@dataclass
class SHE(Score):
    """Simplified Hopfield energy (Zhang et al. 2023; OpenOOD's SHE): the similarity of the feature
    to the stored pattern of its predicted class, the mean feature of the fit samples of that class
    that the model classifies correctly. A class without any such sample has no pattern: samples
    predicted as it score NaN (most-OOD), as OpenOOD's empty mean gives."""

    name = "she"
    reads = ("logits", "features")
    fit_reads = ("logits", "features", "labels")
    state = ("patterns_",)
    default = False
    metric: str = "inner_product"

    def __post_init__(self) -> None:
        if self.metric not in SHE_METRICS:
            raise VitqbenchError(f"she metric must be one of {', '.join(SHE_METRICS)}, got {self.metric!r}")

    def _fit(self, x: ScoreInputs) -> None:
        classes = x.logits.shape[1]
        if x.labels.max() >= classes:
            raise VitqbenchError(f"she fit labels reach {x.labels.max()} but logits have {classes} classes")
        correct = np.argmax(x.logits, axis=1) == x.labels
        patterns = np.full((classes, x.features.shape[1]), np.nan)
        present, means, _ = _class_means(x.features[correct], x.labels[correct])
        patterns[present] = means
        self.patterns_ = patterns

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        features = inputs.features
        self.check_dim(features, self.patterns_.shape[1])
        if inputs.logits.shape[1] != len(self.patterns_):
            raise VitqbenchError(f"she was fitted on {len(self.patterns_)} classes, got {inputs.logits.shape[1]}")
        target = self.patterns_[np.argmax(inputs.logits, axis=1)]
        if self.metric == "euclidean":
            return -np.linalg.norm(features - target, axis=1)
        dot = np.einsum("nd,nd->n", features, target)
        if self.metric == "cosine":  # torch.cosine_similarity's eps on each norm
            norms = np.maximum(np.linalg.norm(features, axis=1), 1e-8) * np.maximum(
                np.linalg.norm(target, axis=1), 1e-8
            )
            return dot / norms
        return dot
