"""Reference of the `xnorpipe::XnorConv2d` v1 contract (docs/XNORCONV2D.md) in PyTorch,
and of the `packed-bits` form's bit-activation ops in NumPy.

Slow and obviously right: every runtime (ONNX function, C++ and CUDA kernels) is tested
bit-exactly against it. The integer tap sum is computed exactly in float64, then
`scale * sum + bias` in float32 as two separate roundings (kernels must not fuse them).
The float ops, `ConvBinarize` (`conv_binarize`) and `AvgPoolBinarize` (`avg_pool_binarize`),
have no bit-exact float32 answer (every runtime sums in its own order): their oracle is the
real-number result, computed in float64. The integer first layer, `ConvIntegerBinarize`
(`conv_integer_binarize`), is exact integer arithmetic: every runtime equals it bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xnorpipe.deploy.ir import shuffle_order
from xnorpipe.deploy.packing import num_words, pack_bits, unpack_bits, unpack_weights


def binarize_input(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """+1 where x >= threshold[c], else -1 (NaN compares false -> -1)."""
    return torch.where(x >= threshold.view(1, -1, 1, 1), 1.0, -1.0).to(x.dtype)


def xnor_conv2d_pm1(
    x: torch.Tensor,
    w_pm1: torch.Tensor,
    threshold: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    relu: bool = False,
) -> torch.Tensor:
    """The contract on weights already unpacked to +-1 [M, C/group, kH, kW].

    The tap sum runs in w_pm1's dtype: exact in float64, and in float32 while |sum| < 2**24.
    """
    xb = binarize_input(x, threshold).to(w_pm1.dtype)
    top, left, bottom, right = pads
    xb = F.pad(xb, (left, right, top, bottom))  # zero padding of the +-1 tensor
    s = F.conv2d(xb, w_pm1, stride=tuple(strides), dilation=tuple(dilations), groups=group).float()
    y = s * scale.view(1, -1, 1, 1)
    y = y + bias.view(1, -1, 1, 1)  # a separate rounding: no fused multiply-add
    return torch.clamp_min(y, 0.0) if relu else y


def xnor_conv2d(
    x: torch.Tensor,
    w_packed: np.ndarray,
    threshold: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    relu: bool = False,
) -> torch.Tensor:
    """X float32 [N, C, H, W] -> Y float32 [N, M, Ho, Wo]; pads are [top, left, bottom, right]."""
    x = torch.as_tensor(x, dtype=torch.float32)
    c = x.shape[1]
    if c % group:
        raise ValueError(f"channels {c} not divisible by group {group}")
    wb = torch.from_numpy(unpack_weights(np.asarray(w_packed), c // group)).double()
    return xnor_conv2d_pm1(x, wb, torch.as_tensor(threshold, dtype=torch.float32),
                           torch.as_tensor(scale, dtype=torch.float32),
                           torch.as_tensor(bias, dtype=torch.float32), strides=strides, pads=pads,
                           dilations=dilations, group=group, relu=relu)


# ------------------------------------------------------------ bit-packed activations (NumPy)
# The `packed-bits` form's tensors: int32 [N, ceil(C/32), H, W], bit k of word q = channel
# 32*q + k, set = +1. These are the oracle of the native kernels' tests: keep them plain.


def binarize_bits(x: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """float [N, C, H, W] -> int32 [N, ceil(C/32), H, W]: bit = x >= threshold[c] (NaN: 0)."""
    return _compare_and_pack(np.asarray(x, dtype=np.float32), threshold)


def _compare_and_pack(x: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """x >= threshold[c] (float32 threshold, compared in x's dtype; NaN: 0), packed to words."""
    threshold = np.asarray(threshold, dtype=np.float32)
    c = x.shape[1]
    if threshold.shape != (c,):
        raise ValueError(f"threshold must be [{c}], got {list(threshold.shape)}")
    with np.errstate(invalid="ignore"):
        bits = x >= threshold.astype(x.dtype).reshape(1, c, 1, 1)
    return np.ascontiguousarray(pack_bits(bits.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))


def unpack_activation_bits(xp: np.ndarray, channels: int) -> np.ndarray:
    """int32 [N, ceil(C/32), H, W] -> float32 +-1 [N, C, H, W]; bits past C are ignored."""
    xp = np.asarray(xp)
    if xp.dtype != np.int32 or xp.ndim != 4:
        raise ValueError(f"activation bits must be int32 [N, words, H, W], got {xp.dtype} {xp.shape}")
    if xp.shape[1] != num_words(channels):
        raise ValueError(f"{xp.shape[1]} words cannot hold {channels} channels")
    return np.ascontiguousarray(unpack_bits(xp.transpose(0, 2, 3, 1), channels).transpose(0, 3, 1, 2))


def _window_taps(x: np.ndarray, dtype, kernel_shape: Sequence[int], strides: Sequence[int],
                 pads: Sequence[int]):
    """Zero-pad x [N, C, H, W] (as `dtype`) and yield, for each window tap (i, j), the
    [N, C, Ho, Wo] values it reads: ONNX pooling geometry, floor mode, pads [t, l, b, r]."""
    (kh, kw), (sh, sw) = kernel_shape, strides
    top, left, bottom, right = pads
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + top + bottom, w + left + right), dtype=dtype)
    padded[:, :, top:top + h, left:left + w] = x
    ho = (h + top + bottom - kh) // sh + 1
    wo = (w + left + right - kw) // sw + 1
    for i in range(kh):
        for j in range(kw):
            yield padded[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]


def bit_max_pool(xp: np.ndarray, kernel_shape: Sequence[int], strides: Sequence[int],
                 pads: Sequence[int] = (0, 0, 0, 0)) -> np.ndarray:
    """int32 bits -> int32 bits: word-wise OR over each window's in-image taps (ONNX MaxPool
    geometry, floor mode; pads are [top, left, bottom, right]). A window without an in-image
    tap gives 0."""
    xp = np.asarray(xp)
    if xp.dtype != np.int32 or xp.ndim != 4:
        raise ValueError(f"activation bits must be int32 [N, words, H, W], got {xp.dtype} {xp.shape}")
    taps = _window_taps(xp.view(np.uint32), np.uint32, kernel_shape, strides, pads)  # 0: OR identity
    out = next(taps).copy()
    for tap in taps:
        out |= tap
    return out.view(np.int32)


def xnor_conv2d_bits(
    xp: np.ndarray,
    channels: int,
    w_packed: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    *,
    output_threshold: np.ndarray | None = None,
    shuffle_output: bool = False,
    **attrs,
) -> np.ndarray:
    """`XnorConv2dBits` (float32 out) or, with `output_threshold`, `XnorConv2dBitsBinarize`
    (int32 bits out): `XnorConv2d` on the unpacked +-1 input (threshold 0: +1 >= 0 > -1), its
    output channels shuffled as ChannelShuffle(group) with `shuffle_output`; `output_threshold`
    is per output (shuffled) channel."""
    x = torch.from_numpy(unpack_activation_bits(xp, channels))
    y = xnor_conv2d(x, w_packed, torch.zeros(channels), torch.as_tensor(scale, dtype=torch.float32),
                    torch.as_tensor(bias, dtype=torch.float32), **attrs).numpy()
    if shuffle_output:
        y = np.ascontiguousarray(y[:, shuffle_order(y.shape[1], attrs.get("group", 1))])
    return y if output_threshold is None else binarize_bits(y, output_threshold)


def float_conv2d64(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    relu: bool = False,
) -> np.ndarray:
    """ONNX Conv (zero padding, pads [top, left, bottom, right]) + bias, then ReLU if `relu`
    (NaN stays NaN), in float64 on the float32 values: float64 [N, M, Ho, Wo].

    Every product of two float32 values is exact in float64 and the sums round ~2**29 times
    finer than float32's, so this is the real-number result for any float32 runtime's purposes.
    """
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32)).double()
    wt = torch.from_numpy(np.asarray(weight, dtype=np.float32)).double()
    bt = torch.from_numpy(np.asarray(bias, dtype=np.float32)).double()
    top, left, bottom, right = pads
    xt = F.pad(xt, (left, right, top, bottom))  # zeros, as ONNX Conv pads
    y = F.conv2d(xt, wt, bt, stride=tuple(strides), dilation=tuple(dilations), groups=group)
    if relu:
        y = torch.where(y < 0, torch.zeros_like(y), y)  # NaN < 0 is false: NaN stays NaN
    return y.numpy()


def conv_binarize(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    threshold: np.ndarray,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    relu: bool = False,
) -> np.ndarray:
    """`xnorpipe::ConvBinarize`: X float [N, C, H, W], W [M, C/group, kH, kW], B [M],
    threshold [M] -> int32 bits [N, ceil(M/32), Ho, Wo]; bit m = relu?(Conv(X, W, B))[m] >=
    threshold[m] (NaN: 0; bits past M: 0).

    The exact real-number answer (float64, see `float_conv2d64`), not a float32 one: runtimes
    sum in their own order, so they agree with it everywhere except where y lies within float32
    rounding of the threshold (tests compare outside a margin of a few ulps of sum |terms|).
    """
    y = float_conv2d64(x, weight, bias, strides=strides, pads=pads, dilations=dilations, group=group,
                       relu=relu)
    return _compare_and_pack(y, threshold)


def avg_pool2d64(
    x: np.ndarray,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int] = (0, 0, 0, 0),
) -> np.ndarray:
    """ONNX AveragePool with count_include_pad=1 (zero padding counts in the divisor
    kH * kW), floor mode, pads [top, left, bottom, right], in float64 on the float32 values:
    float64 [N, C, Ho, Wo]. NaN in a window gives NaN (and +inf with -inf)."""
    kh, kw = kernel_shape
    with np.errstate(invalid="ignore"):
        s = sum(_window_taps(np.asarray(x, dtype=np.float32), np.float64, kernel_shape, strides, pads))
    return s / (kh * kw)


def avg_pool_binarize(
    x: np.ndarray,
    threshold: np.ndarray,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int] = (0, 0, 0, 0),
) -> np.ndarray:
    """`xnorpipe::AvgPoolBinarize`: X float [N, C, H, W], threshold [C] -> int32 bits
    [N, ceil(C/32), Ho, Wo]; bit c = AveragePool(X)[c] >= threshold[c] (count_include_pad=1;
    NaN: 0; bits past C: 0).

    The real-number answer for any float32 runtime's purposes (float64 sums of kH * kW float32
    values and one division, ~2**29 times finer than float32), like `conv_binarize`: runtimes
    agree with it except where the average lies within float32 rounding of the threshold.
    """
    y = avg_pool2d64(x, kernel_shape=kernel_shape, strides=strides, pads=pads)
    return _compare_and_pack(y, threshold)


# ------------------------------------------------------------ the integer first layer (NumPy)


def conv_integer64(
    x: np.ndarray,
    weight: np.ndarray,
    x_zero_point: np.ndarray,
    pad_value: np.ndarray,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
) -> np.ndarray:
    """The sums of `xnorpipe::ConvIntegerBinarize`: X uint8 [N, H, W, C] (NHWC), W int8 or int32
    [M, C, kH, kW], x_zero_point uint8 [C], pad_value int16 or int32 [M, kH, kW] -> int64
    [N, M, Ho, Wo]:

        acc[n, m, p] = sum over the taps (i, j) of output pixel p (pads [top, left, bottom, right]):
                         in the image:   sum_c W[m, c, i, j] * (X[n, tap, c] - z[c])
                         in the padding: pad_value[m, i, j]

    In int64, tap by tap: exact (the op's limits keep every sum far below 2**63).
    """
    x, weight, z, pad_value = (np.asarray(a) for a in (x, weight, x_zero_point, pad_value))
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"X must be uint8 [N, H, W, C], got {x.dtype} {x.shape}")
    n, h, w, c = x.shape
    if weight.dtype not in (np.int8, np.int32) or weight.ndim != 4 or weight.shape[1] != c:
        raise ValueError(f"W must be int8 or int32 [M, {c}, kH, kW], got {weight.dtype} {weight.shape}")
    if z.dtype != np.uint8 or z.shape != (c,):
        raise ValueError(f"x_zero_point must be uint8 [{c}], got {z.dtype} {z.shape}")
    m, _, kh, kw = weight.shape
    if pad_value.dtype not in (np.int16, np.int32) or pad_value.shape != (m, kh, kw):
        raise ValueError(f"pad_value must be int16 or int32 [{m}, {kh}, {kw}], got {pad_value.dtype} {pad_value.shape}")
    (sh, sw), (dh, dw) = strides, dilations
    top, left, bottom, right = pads
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"output size {ho}x{wo} <= 0")
    centred = np.zeros((n, h + top + bottom, w + left + right, c), np.int64)
    centred[:, top:top + h, left:left + w] = x.astype(np.int64) - z.astype(np.int64)  # 0 on the padding
    outside = np.ones((h + top + bottom, w + left + right), np.int64)
    outside[top:top + h, left:left + w] = 0  # 1 where a tap is padding
    acc = np.zeros((n, m, ho, wo), np.int64)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            acc += np.einsum("nhwc,mc->nmhw", centred[:, rows, cols], weight[:, :, i, j].astype(np.int64))
            acc += pad_value[:, i, j].astype(np.int64).reshape(1, m, 1, 1) * outside[rows, cols]
    return acc


def conv_integer_binarize(
    x: np.ndarray,
    weight: np.ndarray,
    x_zero_point: np.ndarray,
    pad_value: np.ndarray,
    threshold: np.ndarray,
    margin: np.ndarray,
    fine_weight: np.ndarray,
    fine_pad_value: np.ndarray,
    fine_threshold: np.ndarray,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
) -> np.ndarray:
    """`xnorpipe::ConvIntegerBinarize` (inputs in the op's order): bits int32 [N, ceil(M/32),
    Ho, Wo]. With acc = conv_integer64(X, W (int8), z, pad_value (int16)) and fine =
    conv_integer64(X, fine_weight (int32), z, fine_pad_value (int32)), bit m is

        1                                   if acc > threshold[m] + margin[m]
        0                                   if acc < threshold[m] - margin[m]
        fine >= fine_threshold[m]           otherwise          (bits past M: 0)

    (threshold, margin int32; fine_threshold int64; a negative margin: acc >= threshold decides).
    """
    attrs = dict(strides=strides, pads=pads, dilations=dilations)
    checks = [("W", weight, np.int8), ("pad_value", pad_value, np.int16), ("threshold", threshold, np.int32),
              ("margin", margin, np.int32), ("fine_weight", fine_weight, np.int32),
              ("fine_pad_value", fine_pad_value, np.int32), ("fine_threshold", fine_threshold, np.int64)]
    for name, a, dtype in checks:
        if np.asarray(a).dtype != dtype:
            raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {np.asarray(a).dtype}")
    acc = conv_integer64(x, weight, x_zero_point, pad_value, **attrs)
    fine = conv_integer64(x, fine_weight, x_zero_point, fine_pad_value, **attrs)
    m = acc.shape[1]
    for name, a in (("threshold", threshold), ("margin", margin), ("fine_threshold", fine_threshold)):
        if np.asarray(a).shape != (m,):
            raise ValueError(f"{name} must be [{m}], got {np.asarray(a).shape}")
    threshold, margin, fine_threshold = (np.asarray(a).astype(np.int64).reshape(1, m, 1, 1)
                                         for a in (threshold, margin, fine_threshold))
    above = acc - threshold
    bits = (above > margin) | ((above >= -margin) & (fine >= fine_threshold))
    return np.ascontiguousarray(pack_bits(bits.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
