"""Scores read from the logits alone, as OpenOOD's postprocessors of the same names define them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

from vitqbench.errors import VitqbenchError
from vitqbench.ood.base import Score, ScoreInputs, check_number, chunks, register


@register
@dataclass
class MSP(Score):
    """Maximum softmax probability (Hendrycks & Gimpel 2017)."""

    name = "msp"

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.logits
        return np.exp(log_softmax(x, axis=1).max(1))


@register
@dataclass
class MaxLogit(Score):
    """Largest logit (Hendrycks et al. 2022)."""

    name = "maxlogit"

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.logits
        return x.max(1)


@register
@dataclass
class Energy(Score):
    """Negative free energy ``T * logsumexp(logits / T)`` (Liu et al. 2020; OpenOOD's EBO)."""

    name = "energy"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        check_number("energy temperature", self.temperature, 0.0, open_min=True)

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.logits
        return self.temperature * logsumexp(x / self.temperature, axis=1)


@register
@dataclass
class Entropy(Score):
    """Negated entropy of the softmax, ``sum p log p`` (a confident prediction is more ID)."""

    name = "entropy"

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.logits
        log_p = log_softmax(x, axis=1)
        return np.sum(np.exp(log_p) * log_p, axis=1)


@register
@dataclass
class GEN(Score):
    """Generalized entropy over the top-M probabilities (Liu et al. 2023), OpenOOD defaults."""

    name = "gen"
    grid = {"gamma": (0.01, 0.1, 0.5, 1, 2, 5, 10), "M": (10, 50, 100, 200, 500, 1000)}
    gamma: float = 0.1
    M: int = 100  # noqa: N815 - the paper's and OpenOOD's name

    def __post_init__(self) -> None:
        check_number("gen gamma", self.gamma, 0.0, open_min=True)  # OpenOOD's grid reaches 10
        check_number("gen M", self.M, 1, integer=True)

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.logits
        p = np.exp(log_softmax(x, axis=1))
        top = np.sort(p, axis=1)[:, -self.M :]
        return -np.sum(top**self.gamma * (1.0 - top) ** self.gamma, axis=1)


@register
@dataclass
class TempScale(Score):
    """MSP of ``logits / T`` (Guo et al. 2017). ``temperature=None`` fits T on the fit set by NLL, as
    OpenOOD's TemperatureScaling does (we minimize over log T with a bounded 1-D search)."""

    name = "tempscale"
    fit_reads = ("logits", "labels")
    state = ("temperature_",)
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.temperature is not None:
            check_number("tempscale temperature", self.temperature, 0.0, open_min=True)
        self.temperature_ = None if self.temperature is None else np.array(float(self.temperature))

    @property
    def needs_fit(self) -> bool:
        return self.temperature is None

    def _fit(self, x: ScoreInputs) -> None:
        logits, labels = x.logits, x.labels
        if labels.max() >= logits.shape[1]:
            raise VitqbenchError(f"tempscale fit labels reach {labels.max()} but logits have {logits.shape[1]} classes")
        rows = np.arange(len(labels))

        def nll(log_t: float) -> float:
            return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean())

        best = minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e2)), method="bounded", options={"xatol": 1e-6})
        self.temperature_ = np.array(float(np.exp(best.x)))

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.logits
        return np.exp(log_softmax(x / float(self.temperature_), axis=1).max(1))


@register
@dataclass
class KLMatching(Score):
    """Minus the smallest KL divergence KL(p || q_c) from the sample's softmax p to q_c, the mean
    softmax of the fit samples the model predicts as class c (Hendrycks et al. 2022; OpenOOD's KLM,
    which fits on ID-val). A class never predicted gets the one-hot q_c, as in OpenOOD."""

    name = "klm"
    fit_reads = ("logits",)
    state = ("log_templates_",)
    default = False

    def _fit(self, x: ScoreInputs) -> None:
        probs = np.exp(log_softmax(x.logits, axis=1))
        classes = probs.shape[1]
        preds = np.argmax(x.logits, axis=1)
        counts = np.bincount(preds, minlength=classes)
        templates = np.zeros((classes, classes))
        np.add.at(templates, preds, probs)
        templates[counts > 0] /= counts[counts > 0, None]
        templates[counts == 0] = np.eye(classes)[counts == 0]
        with np.errstate(divide="ignore"):
            self.log_templates_ = np.log(templates)  # -inf where q_c is 0

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        logits = inputs.logits
        if logits.shape[1] != len(self.log_templates_):
            raise VitqbenchError(f"klm was fitted on {len(self.log_templates_)} classes, got {logits.shape[1]}")
        log_q = self.log_templates_
        zero_q = np.isneginf(log_q)
        out = np.empty(len(logits))
        for rows in chunks(len(logits), 8 * logits.shape[1]):
            log_p = log_softmax(logits[rows], axis=1)
            p = np.exp(log_p)
            # KL(p || q_c) = sum_i p_i (log p_i - log q_ci), with 0 log 0 = 0 and p_i > 0 = q_ci -> inf
            kl = np.sum(p * log_p, axis=1)[:, None] - p @ np.where(zero_q, 0.0, log_q).T
            if zero_q.any():
                kl[((p > 0).astype(np.float64) @ zero_q.T.astype(np.float64)) > 0] = np.inf
            out[rows] = -kl.min(1)
        return out
