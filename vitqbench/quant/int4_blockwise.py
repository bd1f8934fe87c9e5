"""Block-wise 4-bit weight quantization in numpy: scales, codes, clipping search and packing.

A weight ``W`` is the MatMul's right operand, shape [K, N] (K = input features). It is cut into
blocks of ``block_size`` consecutive rows along K; every (block, column) pair gets a scale and a
zero point, and ``W ~= (codes - zero_point) * scale``. A K that is not a multiple of the block size
is padded with zero rows, which quantize exactly to the zero point and so dequantize to 0.

Scales follow ONNX Runtime's MLAS conventions so that our round-to-nearest equals theirs: the
asymmetric range always contains 0 (``scale = (max - min) / 15``), and the symmetric scale is
``extreme / -8`` where ``extreme`` is the signed value of largest magnitude, so that value lands
exactly on code 0 (= -8) and the scale may be negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitqbench.errors import VitqbenchError

QMAX = 15
MID = 8
BLOCK_SIZES = (16, 32, 64, 128, 256)
# Clipping ratios tried by the mse search; 1.0 (plain min/max) is always among them.
CLIP_GRID = tuple(np.round(np.linspace(1.0, 0.5, 26), 4))


@dataclass
class BlockQuant:
    """A quantized [K, N] weight: ``codes`` [K_pad, N] in 0..15, ``scales``/``zero_points`` [nb, N]."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    k: int
    block_size: int
    symmetric: bool
    bits: int = 4

    @property
    def n(self) -> int:
        return self.codes.shape[1]

    @property
    def n_blocks(self) -> int:
        return self.scales.shape[0]

    def dequantize(self) -> np.ndarray:
        """The float weight [K, N] that the quantized model actually multiplies by."""
        scales = np.repeat(self.scales, self.block_size, axis=0)
        zps = np.repeat(self.zero_points.astype(np.float32), self.block_size, axis=0)
        return ((self.codes.astype(np.float32) - zps) * scales)[: self.k]


def check_block_size(block_size: int, k: int | None = None) -> None:
    """A supported block size; ``k`` (one block per column: per-channel scales) is always allowed."""
    if block_size not in BLOCK_SIZES and block_size != k:
        raise VitqbenchError(
            f"block size {block_size} is not supported; choose one of {', '.join(map(str, BLOCK_SIZES))}"
        )


def to_blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """[K, N] -> [nb, block_size, N], zero-padding the tail block."""
    k, n = weight.shape
    n_blocks = -(-k // block_size)
    padded = np.zeros((n_blocks * block_size, n), dtype=np.float32)
    padded[:k] = weight
    return padded.reshape(n_blocks, block_size, n)


def range_params(
    lo: np.ndarray, hi: np.ndarray, symmetric: bool, ratio: float = 1.0, bits: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point (float32, uint8) from per-block minima and maxima, shrunk by ``ratio``.

    ``bits`` other than 4 follow the same conventions with 2**bits levels (codes 0..2**bits - 1).
    """
    qmax, mid = 2**bits - 1, 2 ** (bits - 1)
    lo = np.minimum(lo, 0.0).astype(np.float32) * np.float32(ratio)
    hi = np.maximum(hi, 0.0).astype(np.float32) * np.float32(ratio)
    if symmetric:
        extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)
        scale = (extreme / np.float32(-mid)).astype(np.float32)
        return scale, np.full(scale.shape, mid, dtype=np.uint8)
    scale = ((hi - lo) / np.float32(qmax)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        zp_float = np.where(scale != 0, -lo / scale, 0.0)
    zero_point = np.clip(np.floor(zp_float + 0.5), 0, qmax).astype(np.uint8)
    return scale, zero_point


def encode(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, bits: int = 4) -> np.ndarray:
    """Codes 0..2**bits - 1 of ``values`` for the given scale/zero point (broadcast), rounding like MLAS."""
    with np.errstate(divide="ignore"):
        recip = np.where(scale != 0, np.float32(1.0) / scale, np.float32(0.0)).astype(np.float32)
    x = values * recip + zero_point.astype(np.float32)
    # roundf: halves away from zero (x >= 0 after clipping is what matters here).
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), 0, 2**bits - 1).astype(np.uint8)


def decode(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float32) - zero_point.astype(np.float32)) * scale


def block_params(
    blocks: np.ndarray, symmetric: bool, clip_search: bool, bits: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Per-(block, column) scale and zero point of ``blocks`` [nb, bs, N] (or [bs, N]).

    With ``clip_search`` the range is shrunk by the ratio in ``CLIP_GRID`` that minimizes each
    block's squared reconstruction error; otherwise plain min/max (round to nearest).
    """
    lo, hi = blocks.min(axis=-2), blocks.max(axis=-2)
    best_scale, best_zp = range_params(lo, hi, symmetric, bits=bits)
    if not clip_search:
        return best_scale, best_zp
    best_err = _block_error(blocks, best_scale, best_zp, bits)
    for ratio in CLIP_GRID[1:]:
        scale, zp = range_params(lo, hi, symmetric, float(ratio), bits)
        err = _block_error(blocks, scale, zp, bits)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_zp = np.where(better, zp, best_zp)
    return best_scale, best_zp


def _block_error(blocks: np.ndarray, scale: np.ndarray, zp: np.ndarray, bits: int = 4) -> np.ndarray:
    s, z = scale[..., None, :], zp[..., None, :]
    return np.square(decode(encode(blocks, s, z, bits), s, z) - blocks).sum(axis=-2)


def quantize_weight(
    weight: np.ndarray, block_size: int, symmetric: bool = True, clip_search: bool = False, bits: int = 4
) -> BlockQuant:
    """Round-to-nearest block quantization of ``weight`` [K, N] (``clip_search``: the mse algorithm).

    ``block_size`` = K gives one scale per column (per-channel)."""
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        raise VitqbenchError(f"block quantization needs a 2-D weight, got shape {weight.shape}")
    check_block_size(block_size, weight.shape[0])
    blocks = to_blocks(weight, block_size)
    scale, zp = block_params(blocks, symmetric, clip_search, bits)
    codes = encode(blocks, scale[:, None, :], zp[:, None, :], bits)
    k_pad = blocks.shape[0] * block_size
    return BlockQuant(codes.reshape(k_pad, -1), scale, zp, weight.shape[0], block_size, symmetric, bits)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pack 4-bit values along the last axis, first value in the low nibble (odd length: pad 0)."""
    values = values.astype(np.uint8) & 0x0F
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    out = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[:-1] + (-1,))
    return out[..., :count]


def matmulnbits_arrays(bq: BlockQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inputs B [N, nb, bs/2], scales [N, nb] and packed zero points [N, ceil(nb/2)] of MatMulNBits.

    Symmetric weights need no zero points: MatMulNBits defaults them to 8.
    """
    n, nb, bs = bq.n, bq.n_blocks, bq.block_size
    b = pack_nibbles(bq.codes.T.reshape(n, nb, bs))
    scales = np.ascontiguousarray(bq.scales.T)
    zero_points = None if bq.symmetric else pack_nibbles(bq.zero_points.T)
    return b, scales, zero_points


def qdq_arrays(bq: BlockQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Unpacked int4 (symmetric, int8 array in -8..7) or uint4 (asymmetric) values [K, N],
    scales [nb, N] and, for asymmetric, uint4 zero points [nb, N] for DequantizeLinear(axis=0)."""
    codes = bq.codes[: bq.k]
    if bq.symmetric:
        return codes.astype(np.int8) - MID, bq.scales, None
    return codes, bq.scales, bq.zero_points
