"""Numerics of the 4-bit pass: block quantization, packing, clipping search and GPTQ (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.capi._pybind_state import quantize_matmul_4bits

from vitqbench.errors import VitqbenchError
from vitqbench.quant.int4_blockwise import (
    matmulnbits_arrays,
    pack_nibbles,
    quantize_weight,
    to_blocks,
    unpack_nibbles,
)
from vitqbench.quant.int4_gptq import gptq_quantize

RNG = np.random.default_rng(0)


def on_grid(k: int, n: int, block_size: int, symmetric: bool) -> np.ndarray:
    """A weight whose every block is exactly representable: power-of-two scales, full code range."""
    nb = -(-k // block_size)
    scale = 2.0 ** RNG.integers(-8, -2, size=(nb, n))
    if symmetric:
        codes = RNG.integers(-8, 8, size=(nb * block_size, n))
        codes[::block_size] = -8  # the block's extreme sets the scale to exactly `scale`
        values = codes * np.repeat(scale, block_size, axis=0)
    else:
        zp = RNG.integers(1, 15, size=(nb, n))
        codes = RNG.integers(0, 16, size=(nb * block_size, n))
        codes[::block_size], codes[1::block_size] = 0, 15
        values = (codes - np.repeat(zp, block_size, axis=0)) * np.repeat(scale, block_size, axis=0)
    return values[:k].astype(np.float32)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_round_trip_is_exact_on_the_grid(symmetric, block_size):
    w = on_grid(256, 24, block_size, symmetric)
    bq = quantize_weight(w, block_size, symmetric)
    np.testing.assert_array_equal(bq.dequantize(), w)
    mse = quantize_weight(w, block_size, symmetric, clip_search=True)
    np.testing.assert_array_equal(mse.dequantize(), w)  # nothing to gain from clipping: zero error


def test_rounding_error_is_at_most_half_a_step():
    w = RNG.standard_normal((128, 16)).astype(np.float32)
    bq = quantize_weight(w, 32, symmetric=False)
    step = np.repeat(bq.scales, 32, axis=0)
    assert np.all(np.abs(bq.dequantize() - w) <= 0.5 * step * (1 + 1e-5))


@pytest.mark.parametrize("symmetric", [True, False])
def test_tail_block_is_padded_and_uses_only_real_rows(symmetric):
    w = RNG.standard_normal((100, 8)).astype(np.float32)  # 3 full blocks of 32 and a tail of 4
    bq = quantize_weight(w, 32, symmetric)
    assert bq.codes.shape == (128, 8) and bq.scales.shape == (4, 8)
    assert bq.dequantize().shape == (100, 8)
    tail = quantize_weight(w[96:], 32, symmetric)
    np.testing.assert_array_equal(bq.scales[-1], tail.scales[0])
    np.testing.assert_array_equal(bq.codes[96:], tail.codes)
    # padded rows hold the zero point, so they dequantize to exactly 0
    np.testing.assert_array_equal(bq.codes[100:], np.broadcast_to(bq.zero_points[-1], (28, 8)))


@pytest.mark.parametrize(
    ("k", "block_size", "symmetric"),
    [(384, 32, True), (384, 64, False), (100, 32, True), (100, 64, False), (96, 128, False)],
)
def test_rtn_equals_onnxruntime_blockwise_quantizer(k, block_size, symmetric):
    n = 40
    w = RNG.standard_normal((k, n)).astype(np.float32)
    nb = -(-k // block_size)
    packed = np.zeros((n, nb, block_size // 2), np.uint8)
    scales = np.zeros((n, nb), np.float32)
    zps = np.zeros((n, (nb + 1) // 2), np.uint8)
    quantize_matmul_4bits(packed, to_blocks(w, block_size).reshape(-1, n), scales, zps, block_size, n, k, symmetric)
    b, ours_scales, ours_zps = matmulnbits_arrays(quantize_weight(w, block_size, symmetric))
    np.testing.assert_array_equal(ours_scales, scales)
    codes = unpack_nibbles(b, block_size).reshape(n, -1)[:, :k]
    np.testing.assert_array_equal(codes, unpack_nibbles(packed, block_size).reshape(n, -1)[:, :k])
    if not symmetric:
        np.testing.assert_array_equal(unpack_nibbles(ours_zps, nb), unpack_nibbles(zps, nb))


def test_nibble_packing_puts_the_first_value_low():
    assert pack_nibbles(np.array([1, 2, 15], np.uint8)).tolist() == [0x21, 0x0F]
    values = RNG.integers(0, 16, size=(3, 7)).astype(np.uint8)
    np.testing.assert_array_equal(unpack_nibbles(pack_nibbles(values), 7), values)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_search_never_loses_to_rtn_on_any_block(symmetric):
    w = (RNG.standard_t(3, size=(256, 64)) * 0.02).astype(np.float32)  # heavy tails: clipping helps
    rtn = quantize_weight(w, 64, symmetric)
    mse = quantize_weight(w, 64, symmetric, clip_search=True)

    def block_err(bq):
        return np.square(bq.dequantize() - w).reshape(4, 64, 64).sum(axis=1)

    assert np.all(block_err(mse) <= block_err(rtn))
    assert block_err(mse).sum() < 0.95 * block_err(rtn).sum()


def test_bad_block_size_is_one_clear_error():
    with pytest.raises(VitqbenchError, match="block size 48"):
        quantize_weight(np.zeros((64, 4), np.float32), 48)


def correlated_activations(k: int, rows: int = 3000) -> np.ndarray:
    mix = np.eye(k) + 0.4 * RNG.standard_normal((k, k)) / np.sqrt(k)
    x = RNG.standard_normal((rows, k)) @ mix
    x[:, :4] *= 10  # a few outlier channels, as in ViT activations
    return x.astype(np.float32)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_output_error_is_below_rtn(symmetric, act_order):
    x = correlated_activations(192)
    w = (RNG.standard_normal((192, 48)) * 0.05).astype(np.float32)
    h = x.T.astype(np.float64) @ x

    def out_err(bq):
        return np.linalg.norm(x @ (bq.dequantize() - w))

    rtn = quantize_weight(w, 32, symmetric)
    gptq = gptq_quantize(w, h, 32, symmetric, act_order=act_order)
    assert out_err(gptq) < 0.95 * out_err(rtn)


def test_gptq_with_uncorrelated_inputs_is_rtn():
    # With H = I nothing propagates between rows: GPTQ reduces to round to nearest.
    w = RNG.standard_normal((96, 16)).astype(np.float32)
    bq = gptq_quantize(w, np.eye(96), 32, symmetric=False)
    rtn = quantize_weight(w, 32, symmetric=False)
    np.testing.assert_array_equal(bq.codes, rtn.codes)
    np.testing.assert_array_equal(bq.scales, rtn.scales)
