"""GPTQ for block-wise 4-bit weights: Hessians from calibration activations, then error compensation.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"
(2022). Rows of our [K, N] weight are the input features GPTQ walks through; each row is rounded
with its block's scale and the rounding error is spread onto the rows not yet quantized, weighted
by the inverse Hessian ``H = sum x x^T`` of that layer's inputs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from vitqbench.errors import VitqbenchError
from vitqbench.quant.calibration import iter_activations
from vitqbench.quant.int4_blockwise import (
    BlockQuant,
    block_params,
    check_block_size,
    decode,
    encode,
    to_blocks,
)

LAZY_ROWS = 128  # rows updated together before the trailing rows get the accumulated error


def collect_hessians(
    model: onnx.ModelProto,
    tensors: Iterable[str],
    calib: Iterable[np.ndarray],
    threads: int | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """``sum x x^T`` over every token of every calibration image, for each named float tensor.

    Runs the float model once over ``calib`` (streamed) with the tensors added as outputs, so memory
    is bounded by one chunk of activations plus the [K, K] sums. Returns the sums and the image count.
    """
    sums: dict[str, np.ndarray] = {}
    images = 0
    # No bar of ours: the calibration source draws its own, and rich allows one.
    for chunk in iter_activations(model, tensors, calib, threads):
        for name, act in chunk.items():
            add_hessian(sums, name, act)
        images += next(iter(chunk.values())).shape[0]
    if images == 0:
        raise VitqbenchError("gptq needs calibration images, but the calibration source yielded none")
    return sums, images


def add_hessian(sums: dict[str, np.ndarray], name: str, act: np.ndarray) -> None:
    x = act.reshape(-1, act.shape[-1])
    h = (x.T @ x).astype(np.float64)
    sums[name] = sums[name] + h if name in sums else h


def gptq_quantize(
    weight: np.ndarray,
    hessian: np.ndarray,
    block_size: int,
    symmetric: bool = True,
    damp: float = 0.01,
    act_order: bool = False,
    clip_search: bool = False,
    bits: int = 4,
) -> BlockQuant:
    """GPTQ-quantize ``weight`` [K, N] given its input Hessian [K, K].

    ``damp`` adds ``damp * mean(diag(H))`` to the diagonal. With ``act_order`` rows are visited by
    decreasing Hessian diagonal; block scales are then fixed up front from the float weight
    ("static groups"), because MatMulNBits needs each block of K to share one scale.
    """
    w = np.array(weight, dtype=np.float32)
    k, n = w.shape
    check_block_size(block_size, k)
    if hessian.shape != (k, k):
        raise VitqbenchError(f"hessian shape {hessian.shape} does not match weight rows {k}")
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    n_blocks = -(-k // block_size)
    if act_order:
        scales, zps = block_params(to_blocks(w, block_size), symmetric, clip_search, bits)
        perm = np.argsort(-np.diag(h), kind="stable")
        w, h = w[perm], h[perm][:, perm]
    else:
        perm = np.arange(k)
        scales = np.zeros((n_blocks, n), np.float32)
        zps = np.zeros((n_blocks, n), np.uint8)
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    try:
        # Upper Cholesky factor of H^-1: row i holds how row i's error propagates to rows after it.
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T.astype(np.float32)
    except np.linalg.LinAlgError as exc:
        raise VitqbenchError("gptq: the calibration Hessian is not positive definite; raise --damp") from exc

    codes = np.zeros((k, n), np.uint8)
    lazy = max(block_size, LAZY_ROWS // block_size * block_size)  # groups never straddle a lazy batch
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = w[i1:i2].copy()
        err = np.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = i1 + i
            if act_order:
                g = perm[row] // block_size
            else:
                g = row // block_size
                if row % block_size == 0:
                    scales[g], zps[g] = block_params(w1[i : i + block_size], symmetric, clip_search, bits)
            q = encode(w1[i], scales[g], zps[g], bits)
            codes[row] = q
            e = (w1[i] - decode(q, scales[g], zps[g])) / h1[i, i]
            w1[i:] -= np.outer(h1[i, i:], e)
            err[i] = e
        if i2 < k:
            w[i2:] -= hinv[i1:i2, i2:].T @ err

    codes = codes[np.argsort(perm)]
    k_pad = n_blocks * block_size
    padded = np.repeat(zps, block_size, axis=0)[:k_pad].copy()
    padded[:k] = codes
    return BlockQuant(padded, scales, zps, k, block_size, symmetric, bits)
