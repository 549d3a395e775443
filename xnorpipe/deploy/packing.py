"""Bit-packing of binary weights, exactly as the XnorConv2d contract lays them out.

Word W[m, i, j, q] holds group-local input channels 32*q .. 32*q+31 of tap (i, j) of filter
m; bit k set means +1, clear means -1; bits past the channel count are 0.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 32


def num_words(channels: int) -> int:
    return (channels + WORD_BITS - 1) // WORD_BITS


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Boolean [..., C] -> int32 words [..., ceil(C/32)]: channel 32*q + k is bit k of word q;
    bits past C are 0. The one bit layout of weights and activations alike."""
    bits = np.asarray(bits, dtype=bool)
    c = bits.shape[-1]
    nw = num_words(c)
    padded = np.zeros((*bits.shape[:-1], nw * WORD_BITS), dtype=np.uint64)
    padded[..., :c] = bits
    weights = np.uint64(1) << np.arange(WORD_BITS, dtype=np.uint64)
    words = (padded.reshape(*bits.shape[:-1], nw, WORD_BITS) * weights).sum(axis=-1, dtype=np.uint64)
    return words.astype(np.uint32).view(np.int32)


def unpack_bits(words: np.ndarray, channels: int) -> np.ndarray:
    """int32 words [..., ceil(C/32)] -> float32 +-1 [..., C] (inverse of pack_bits; bits past C
    are ignored)."""
    u = np.asarray(words).view(np.uint32).astype(np.uint64)[..., None]
    bits = (u >> np.arange(WORD_BITS, dtype=np.uint64)) & np.uint64(1)
    bits = bits.reshape(*bits.shape[:-2], -1)[..., :channels]
    return bits.astype(np.float32) * 2 - 1


def pack_weights(positive: np.ndarray) -> np.ndarray:
    """[M, Cg, kH, kW] boolean (True = +1) -> int32 [M, kH, kW, ceil(Cg/32)]."""
    return pack_bits(np.asarray(positive, dtype=bool).transpose(0, 2, 3, 1))


def unpack_weights(words: np.ndarray, channels: int) -> np.ndarray:
    """int32 [M, kH, kW, nw] -> float32 [M, Cg, kH, kW] of +-1 (inverse of pack_weights)."""
    words = np.asarray(words)
    if words.dtype != np.int32 or words.ndim != 4:
        raise ValueError(f"packed weights must be int32 [M, kH, kW, words], got {words.dtype} {words.shape}")
    if words.shape[3] != num_words(channels):
        raise ValueError(f"{words.shape[3]} words cannot hold {channels} channels")
    return unpack_bits(words, channels).transpose(0, 3, 1, 2).copy()
