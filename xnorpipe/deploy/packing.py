"""Bit-packing of binary weights, exactly as the XnorConv2d contract lays them out.

Word W[m, i, j, q] holds group-local input channels 32*q .. 32*q+31 of tap (i, j) of filter
m; bit k set means +1, clear means -1; bits past the channel count are 0.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 32


def num_words(channels: int) -> int:
    return (channels + WORD_BITS - 1) // WORD_BITS


def pack_weights(positive: np.ndarray) -> np.ndarray:
    """[M, Cg, kH, kW] boolean (True = +1) -> int32 [M, kH, kW, ceil(Cg/32)]."""
    positive = np.asarray(positive, dtype=bool)
    m, cg, kh, kw = positive.shape
    nw = num_words(cg)
    bits = np.zeros((m, kh, kw, nw * WORD_BITS), dtype=np.uint64)
    bits[..., :cg] = positive.transpose(0, 2, 3, 1)
    bits = bits.reshape(m, kh, kw, nw, WORD_BITS)
    weights = np.uint64(1) << np.arange(WORD_BITS, dtype=np.uint64)
    words = (bits * weights).sum(axis=-1, dtype=np.uint64).astype(np.uint32)
    return words.view(np.int32)


def unpack_weights(words: np.ndarray, channels: int) -> np.ndarray:
    """int32 [M, kH, kW, nw] -> float32 [M, Cg, kH, kW] of +-1 (inverse of pack_weights)."""
    words = np.asarray(words)
    if words.dtype != np.int32 or words.ndim != 4:
        raise ValueError(f"packed weights must be int32 [M, kH, kW, words], got {words.dtype} {words.shape}")
    if words.shape[3] != num_words(channels):
        raise ValueError(f"{words.shape[3]} words cannot hold {channels} channels")
    u = words.view(np.uint32).astype(np.uint64)[..., None]
    bits = (u >> np.arange(WORD_BITS, dtype=np.uint64)) & np.uint64(1)
    m, kh, kw, nw, _ = bits.shape
    bits = bits.reshape(m, kh, kw, nw * WORD_BITS)[..., :channels]
    return (bits.astype(np.float32) * 2 - 1).transpose(0, 3, 1, 2).copy()
