"""Scores read from a ViT's attention (models exported with ``vitqbench export --attention``).

Neither is an OpenOOD postprocessor; they ask whether the paper's attention lens also detects OOD
inputs. Higher = more in-distribution, as for every score: both read focused attention as ID (on
the trained ViTs here, the class token's attention is less concentrated on OOD inputs in the deeper
blocks). A model whose attention is more focused on its OOD sets gets an AUROC below 50 %, which is
itself the measured answer. Neither runs unless named in ``--scores``: they need the extra outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitqbench.errors import VitqbenchError
from vitqbench.ood.base import Score, ScoreInputs, register


def rollout_concentration(rollout: np.ndarray) -> np.ndarray:
    """[N, patches] -> [N]: ``1 - H(r) / log(patches)`` of each renormalized row; 0 uniform, 1 on one patch."""
    p = np.clip(np.asarray(rollout, dtype=np.float64), 0, None)
    total = p.sum(1, keepdims=True)
    p = np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return 1.0 - entropy / np.log(p.shape[1]) if p.shape[1] > 1 else np.zeros(len(p))


@register
@dataclass
class AttentionEntropy(Score):
    """Negated attention entropy of one block (default: the last), mean over its heads (and queries)."""

    name = "attn_entropy"
    reads = ("attn_entropy",)
    default = False  # needs --attention exports
    block: int = -1  # Python indexing: -1 is the last block

    def __post_init__(self) -> None:
        if isinstance(self.block, bool) or not isinstance(self.block, int):
            raise VitqbenchError(f"attn_entropy block must be a whole number, got {self.block!r}")

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        x = inputs.attn_entropy  # [N, depth, heads]
        depth = x.shape[1]
        if not -depth <= self.block < depth:
            raise VitqbenchError(f"attn_entropy block {self.block} is outside this model's {depth} blocks")
        return -x[:, self.block, :].mean(1)


@register
@dataclass
class Rollout(Score):
    """Concentration of the class token's attention rollout over the patches, ``1 - H / log(patches)``."""

    name = "rollout"
    reads = ("attn_rollout",)
    default = False

    def _score(self, inputs: ScoreInputs) -> np.ndarray:
        return rollout_concentration(inputs.attn_rollout)
