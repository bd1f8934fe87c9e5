"""Attention under quantization (``eval --attention``), ID vs OOD, from models exported with ``--attention``.

Per model, dataset and block: how focused attention is (mean entropy; the class token's attention
concentration) and, for a model with a baseline, how far its class-token attention moved from the
baseline's on the same images (Jensen-Shannon divergence, per sample, averaged) and how well the
class token's attention rollout keeps its ranking of the patches (Spearman, per sample, averaged);
for the report, the rollouts of a few fixed images. Read from the cached outputs after the cells
ran: attention costs no extra inference.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import rankdata

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.cache import OutputCache, Outputs
from vitqbench.metadata import ATTN_CLS, ATTN_ENTROPY, ATTN_ROLLOUT, ModelMetadata, attention_layout
from vitqbench.results import AttentionMap, AttentionRow, DatasetInfo, Failure, ModelInfo

if TYPE_CHECKING:
    from vitqbench.data import Dataset

MAPS_PER_SET = 2  # fixed images per ID/OOD set whose rollout the report overlays (the first all models read)


def patch_rollout(out: Outputs, model: ModelInfo) -> np.ndarray | None:
    """[N, patches]: the class token's rollout over the patch tokens (None: not exported), in grid order."""
    rollout = out.extras.get(ATTN_ROLLOUT)
    layout = attention_layout((model.metadata or {}).get("attention"))
    if rollout is None or layout is None:
        return None
    prefix, (rows, cols) = layout
    if rollout.shape[1] != prefix + rows * cols:
        raise VitqbenchError(
            f"{model.label}: attn_rollout has {rollout.shape[1]} tokens, "
            f"not {prefix} + {rows}x{cols} as its metadata says"
        )
    return rollout[:, prefix:]


def attention_failures(metas: dict[str, ModelMetadata]) -> list[Failure]:
    """--attention reads outputs only ``export --attention`` writes: a failure per model without them
    (one line naming the flag); when no model has them, one error before anything runs."""
    missing = [label for label, meta in metas.items() if ATTN_CLS not in meta.outputs]
    if missing and len(missing) == len(metas):
        raise VitqbenchError(
            f"--attention needs models exported with `vitqbench export --attention`; {', '.join(missing)} "
            f"{'has' if len(missing) == 1 else 'have'} no attention outputs"
        )
    reason = VitqbenchError("no attention outputs: export the model with `vitqbench export --attention`")
    return [Failure.of(label, None, "attention", reason) for label in missing]


def attention_rows(
    models: list[ModelInfo], datasets: list[DatasetInfo], keys: dict[tuple[str, str], str], cache_root: Path
) -> list[AttentionRow]:
    """Rows for every model x ID/OOD dataset whose outputs cell succeeded (``keys``: its cache key)."""
    rows = []
    for data, model, out, base in _pairs(models, datasets, keys, cache_root):
        drift = _js_drift(out, base) if base is not None else None
        spearman = _rollout_spearman(out, base, model) if base is not None else None
        entropy = out.extras[ATTN_ENTROPY].mean(axis=(0, 2))  # [depth]
        concentration = _concentration(out.extras[ATTN_CLS]).mean(axis=0)
        for block in range(len(entropy)):
            rows.append(
                AttentionRow(
                    model=model.label,
                    dataset=data.name,
                    role=data.role,
                    block=block,
                    entropy=float(entropy[block]),
                    cls_concentration=float(concentration[block]),
                    drift_js=None if drift is None else float(drift[block]),
                    rollout_spearman=spearman if block == len(entropy) - 1 else None,
                )
            )
    return rows


def attention_maps(
    models: list[ModelInfo],
    datasets: list[DatasetInfo],
    keys: dict[tuple[str, str], str],
    cache_root: Path,
    per_set: int = MAPS_PER_SET,
) -> list[AttentionMap]:
    """The rollout of every model over the first ``per_set`` images of each ID/OOD set that they all read."""
    read: dict[str, list[tuple[ModelInfo, Outputs]]] = {}
    for data, model, out, _ in _pairs(models, datasets, keys, cache_root, with_base=False):
        if patch_rollout(out, model) is not None:
            read.setdefault(data.name, []).append((model, out))
    maps = []
    for data in (d for d in datasets if d.name in read):
        pairs = read[data.name]
        shared = functools.reduce(np.intersect1d, [out.indices for _, out in pairs])[:per_set]
        for model, out in pairs:
            rollout = patch_rollout(out, model)
            _, grid = attention_layout(model.metadata["attention"])
            for index in shared:
                row = int(np.searchsorted(out.indices, index))
                r = np.clip(rollout[row].astype(np.float64), 0, None)
                maps.append(
                    AttentionMap(
                        model=model.label, dataset=data.name, role=data.role, index=int(index),
                        path=str(out.paths[row]), grid=grid, rollout=(r / max(r.sum(), 1e-12)).tolist(),
                    )
                )  # fmt: skip
    return maps


def map_images(maps: list[AttentionMap], models: list[ModelInfo], loaded: dict[str, Dataset]) -> dict:
    """(dataset, index) -> the image as the first model that read it saw it (uint8 [H, W, C])."""
    from vitqbench.data import Geometry
    from vitqbench.data.stream import decode_chunk
    from vitqbench.metadata import DataConfig

    by_label = {m.label: m for m in models}
    images = {}
    for m in maps:
        if (m.dataset, m.index) in images or m.dataset not in loaded:
            continue
        config = DataConfig.from_dict(by_label[m.model].metadata["data_config"])
        decoded, errors = decode_chunk([loaded[m.dataset].sources[m.index]], Geometry.from_config(config))
        if not errors:
            images[(m.dataset, m.index)] = decoded[0]
    return images


def _pairs(
    models: list[ModelInfo],
    datasets: list[DatasetInfo],
    keys: dict[tuple[str, str], str],
    cache_root: Path,
    with_base: bool = True,
) -> Iterator[tuple[DatasetInfo, ModelInfo, Outputs, Outputs | None]]:
    """(dataset, model, its outputs, its baseline's outputs or None) of every model x ID/OOD set with attention."""
    cache = OutputCache(cache_root)
    baselines = {m.baseline for m in models}
    for data in (d for d in datasets if d.role in ("id", "ood")):
        bases: dict[str, Outputs | None] = {}  # each baseline read once per dataset, not once per model
        for model in models:
            out = bases[model.label] if model.label in bases else _get(cache, keys, model.label, data.name)
            if model.label in baselines:
                bases[model.label] = out
            if out is None:
                continue
            base = None
            if with_base and model.baseline not in (None, model.label):
                if model.baseline not in bases:
                    bases[model.baseline] = _get(cache, keys, model.baseline, data.name)
                base = bases[model.baseline]
            yield data, model, out, base


def _get(cache: OutputCache, keys: dict[tuple[str, str], str], model: str | None, dataset: str) -> Outputs | None:
    key = keys.get((model, dataset)) if model is not None else None
    out = cache.get(key) if key is not None else None
    return out if out is not None and ATTN_CLS in out.extras else None


def _concentration(cls: np.ndarray) -> np.ndarray:
    """[N, depth, tokens] attention rows -> [N, depth] of 1 - H / log(tokens)."""
    p = np.clip(cls.astype(np.float64), 1e-12, None)
    p = p / p.sum(-1, keepdims=True)
    return 1.0 - (-(p * np.log(p)).sum(-1)) / np.log(cls.shape[-1])


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits (0-1) along the last axis; rows are renormalized first."""
    p = np.clip(p.astype(np.float64), 0, None)
    q = np.clip(q.astype(np.float64), 0, None)
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(a / m), 0.0).sum(-1)

    return (kl(p) + kl(q)) / 2


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair along the last axis (ties get mean ranks; a constant row gives NaN)."""
    ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
    ra -= ra.mean(-1, keepdims=True)
    rb -= rb.mean(-1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (ra * rb).sum(-1) / denom, np.nan)


def _rollout_spearman(out: Outputs, base: Outputs, model: ModelInfo) -> float | None:
    """Mean over the shared images of the rank correlation of the two rollouts over the patches."""
    mine, theirs = patch_rollout(out, model), patch_rollout(base, model)
    if mine is None or theirs is None:
        return None
    _, i, j = np.intersect1d(out.indices, base.indices, return_indices=True)
    rho = rank_correlation(mine[i].astype(np.float64), theirs[j].astype(np.float64))
    return float(np.nanmean(rho)) if np.isfinite(rho).any() else None


def _js_drift(out: Outputs, base: Outputs) -> np.ndarray:
    """[depth]: the mean over the images both models read of the per-sample JS divergence per block."""
    shared, mine, theirs = np.intersect1d(out.indices, base.indices, return_indices=True)
    if not len(shared):
        return np.full(out.extras[ATTN_CLS].shape[1], np.nan)
    return js_divergence(out.extras[ATTN_CLS][mine], base.extras[ATTN_CLS][theirs]).mean(axis=0)
