"""The integer first layer (`xnorpipe export --first-layer int8`): the float first conv, its ReLU
and the next binary layer's binarization as one `xnorpipe::ConvIntegerBinarize` on the decoded
uint8 image (docs/XNORCONV2D.md, "The integer first layer").

The float layer computes, on x = (u / 255 - mean) / std zero-padded,

    y[m, p] = B[m] + sum_{c, i, j} W[m, c, i, j] * x[c, p + (i, j)],   bit = relu(y) >= t[m].

With a per-input-channel zero point z[c] = round(255 * mean[c]), an in-image tap gives
x = (u - z) / (255 std) + (z - 255 mean) / (255 std): the weights on the centred pixel u - z are
W' = W / (255 std[c]), and the second term summed over all taps folds into the bias
(B' = B + sum W * (z - 255 mean) / (255 std)); a padded tap (x = 0) must then give back its share
of that term, sum_c W' * (255 mean - z), which the op's `pad_value` carries.

W' is quantised per output channel to int8, W' ~ s[m] * q[m] (s > 0, q carries the sign), the
pad value to int16 in the same unit, pv = round(sum_c q * (255 mean - z)), and y ~ B' + s * acc
with acc the op's exact integer sum, so `relu(y) >= t` becomes `acc >= T[m]` with
T = ceil((t - B') / s), computed exactly in rationals. Channels whose bit does not depend on the
input (relu with t <= 0, t = +-inf or NaN, all-zero weights) get q = 0, pv = 0 and T = 0 (always
1) or 1 (never).

int8 weights flip a few bits in ten thousand (~4e-4 on CIFAR-10), and a binary net is chaotic in
them: on the 2-epoch checkpoint one flipped bit of layer 1's input changes the top-1 of ~3 % of
images. So the op also takes a fine quantisation of the same layer (int32 weights, FINE_LEVELS
levels) and a margin per channel: where the int8 sum lies within the margin of its threshold
(~0.5 % of the outputs), the fine sum decides. The margin is MARGIN_SIGMAS standard deviations of
the int8 sum's rounding error (from the calibration patches' second moments), plus one.

Rounding: nearest rounding lets errors on correlated taps add up (neighbouring pixels of a
photograph are alike). Each channel's rounding is chosen, between floor and ceiling per weight,
to minimise the mean squared error of its sum over the calibration images' patches,
e^T S e with S their second-moment matrix (greedy coordinate descent from nearest rounding).
The scale of each channel is then chosen among SCALE_LEVELS to minimise the bits that differ
from the float layer (evaluated in float64) on the calibration images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from xnorpipe.deploy import ir
from xnorpipe.deploy.reference import float_conv2d64
from xnorpipe.errors import XnorpipeError

WEIGHT_LEVELS = 127  # |q| <= 127: symmetric int8
# Candidate scales s = max|W'| / L: L = 127 uses the full range; a smaller L rounds coarser but
# differently, a larger one clips the largest weights. Each channel keeps the L that flips the
# fewest calibration bits (ties: the first, 127).
SCALE_LEVELS = (127.0, 125.0, 123.0, 120.0, 131.0)
FINE_LEVELS = 2**20  # the fine weights' |q| bound: int32, sums far inside int64 (and float64)
MARGIN_SIGMAS = 5.0
CALIBRATION_IMAGES = 256
_MOMENT_IMAGES = 64  # images whose patches give the rounding's second moments (75 x 75 for 5x5x3)
_CHUNK = 32  # calibration images per float64 conv
_ROUNDING_PASSES = 8


@dataclass
class IntegerFirstLayer:
    """`xnorpipe::ConvIntegerBinarize`'s tensors and attributes for one model."""

    weight: np.ndarray  # int8 [M, C, kH, kW]
    x_zero_point: np.ndarray  # uint8 [C]
    pad_value: np.ndarray  # int16 [M, kH, kW]
    threshold: np.ndarray  # int32 [M]
    margin: np.ndarray  # int32 [M]: within it of the threshold the fine sum decides (< 0: never)
    fine_weight: np.ndarray  # int32 [M, C, kH, kW]
    fine_pad_value: np.ndarray  # int32 [M, kH, kW]
    fine_threshold: np.ndarray  # int64 [M]
    scale: np.ndarray  # float64 [M]: y ~ offset + scale * acc (0: a constant channel)
    offset: np.ndarray  # float64 [M]
    kernel_shape: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    calibration: str  # which images chose the scales: synthetic:<seed> or data:<sha256>
    calibration_images: int
    flipped_bits: int  # bits that differ from the float layer on the calibration images
    int8_flipped_bits: int  # the same with the int8 sum alone (no margin)
    refined_bits: int  # bits the fine sum decided (the int8 sum within the margin)
    total_bits: int

    def tensors(self) -> list[tuple[str, np.ndarray]]:
        """The op's inputs after X, in the op table's order and dtypes (the contract's)."""
        from xnorpipe.deploy.onnx.ops import CONV_INTEGER_BINARIZE_OP

        values = {"W": self.weight, "x_zero_point": self.x_zero_point, "pad_value": self.pad_value,
                  "threshold": self.threshold, "margin": self.margin, "fine_weight": self.fine_weight,
                  "fine_pad_value": self.fine_pad_value, "fine_threshold": self.fine_threshold}
        return [(t.name, np.asarray(values[t.name], t.np_dtype)) for t in CONV_INTEGER_BINARIZE_OP.inputs[1:]]

    def attributes(self) -> dict:
        """The op's node attributes."""
        return dict(kernel_shape=list(self.kernel_shape), strides=list(self.strides), pads=list(self.pads),
                    dilations=list(self.dilations))

    def metadata(self) -> dict[str, str]:
        return {"xnorpipe.first_layer": "int8",
                "xnorpipe.first_layer_quantisation": json.dumps({
                    "weights": "int8 per output channel, rounding and scale chosen on calibration images; "
                               f"within the margin ({MARGIN_SIGMAS:g} sigma) int32 weights decide",
                    "calibration": self.calibration, "calibration_images": self.calibration_images,
                    "flipped_bits": self.flipped_bits, "int8_flipped_bits": self.int8_flipped_bits,
                    "refined_bits": self.refined_bits, "total_bits": self.total_bits})}


def _check_model(model: ir.DeployModel) -> tuple[ir.FloatConv, np.ndarray]:
    """The first conv and the threshold its readers binarize its output at."""
    from xnorpipe.deploy.onnx.emit import bit_tensors

    first = model.nodes[0] if model.nodes else None
    threshold = bit_tensors(model).get(first.output) if first is not None else None
    if threshold is None or not isinstance(first.op, ir.FloatConv) or first.inputs != (ir.INPUT,):
        raise XnorpipeError(f"{model.arch}: --first-layer int8 needs a float first conv (group 1) whose output "
                            "only binary layers read, at one threshold, as in the NIN-XNOR nets")
    conv = first.op
    c = conv.in_channels
    if not (len(model.mean) == len(model.std) == c == model.input_shape[0]):
        raise XnorpipeError(f"{model.arch}: the first conv has {c} input channels, the normalisation "
                            f"{len(model.mean)} means and {len(model.std)} stds")
    if not all(v > 0 and math.isfinite(v) for v in model.std) or not all(math.isfinite(v) for v in model.mean):
        raise XnorpipeError(f"{model.arch}: normalisation needs finite means and positive stds, got "
                            f"{list(model.mean)}, {list(model.std)}")
    return conv, threshold


def zero_points(mean) -> np.ndarray:
    """uint8 [C]: the raw value closest to the one that normalises to 0."""
    return np.clip(np.rint(np.asarray(mean, np.float64) * 255.0), 0, 255).astype(np.uint8)


def integer_threshold(t: float, offset: float, scale: float, bits: int = 32) -> int:
    """The smallest integer a with offset + scale * a >= t (scale > 0, all finite), exactly,
    clamped to int`bits` (the sums stay inside it, so a clamped threshold decides every sum as the
    exact one)."""
    a = math.ceil((Fraction(t) - Fraction(offset)) / Fraction(scale))
    return int(np.clip(a, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1))


def _constant_bit(relu: bool, t: float, offset: float, scale: float) -> bool | None:
    """The bit of a channel that does not depend on the input, else None."""
    if math.isnan(t):
        return False  # y >= NaN is false
    if math.isinf(t):
        return t < 0
    if relu and t <= 0:
        return True  # relu(y) >= 0 >= t
    if scale == 0:
        return (max(offset, 0.0) if relu else offset) >= t
    return None


def normalised(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, as the model's input: (u / 255 - mean) / std in float32."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32).reshape(1, -1, 1, 1)) / np.asarray(std, np.float32).reshape(1, -1, 1, 1)


def _patch_moment(images: np.ndarray, z: np.ndarray, conv: ir.FloatConv) -> np.ndarray:
    """float64 [K, K], K = C*kH*kW: the mean of x x^T over every output position's patch of the
    centred images u - z (padded taps 0), in W's (c, i, j) order."""
    top, left, bottom, right = conv.pads
    k = int(np.prod(conv.weight.shape[1:]))
    moment, count = np.zeros((k, k)), 0
    images = images[:_MOMENT_IMAGES]
    for start in range(0, len(images), _CHUNK):
        centred = torch.from_numpy(images[start:start + _CHUNK].astype(np.float64) - z).permute(0, 3, 1, 2)
        patches = F.unfold(F.pad(centred, (left, right, top, bottom)), conv.kernel_shape,
                           dilation=conv.dilations, stride=conv.strides)  # [n, K, L]
        flat = patches.transpose(1, 2).reshape(-1, k)
        moment += (flat.T @ flat).numpy()
        count += flat.shape[0]
    return moment / count


def rounded(scaled: np.ndarray, moment: np.ndarray, levels: int = WEIGHT_LEVELS) -> np.ndarray:
    """Integer weights q [M, K] within one of `scaled` [M, K] (floor or ceiling, |q| <= levels)
    that minimise (q - scaled)^T moment (q - scaled) per row: greedy coordinate descent from
    nearest rounding, all rows at once, until no single step lowers it (at most
    _ROUNDING_PASSES)."""
    q = np.clip(np.rint(scaled), -levels, levels)
    gradient = (q - scaled) @ moment  # half the gradient of the error
    for _ in range(_ROUNDING_PASSES):
        moved = 0
        for k in range(scaled.shape[1]):
            for step in (1.0, -1.0):
                new = q[:, k] + step
                better = ((2 * step * gradient[:, k] + moment[k, k] < 0) & (np.abs(new - scaled[:, k]) < 1)
                          & (np.abs(new) <= levels))
                if better.any():
                    q[better, k] = new[better]
                    gradient[better] += step * moment[k]
                    moved += int(better.sum())
        if not moved:
            break
    return q


def _integer_sums(conv: ir.FloatConv, image_hw: tuple[int, int], weight: np.ndarray, pad_value: np.ndarray):
    """centred, padded images (float64 NCHW, `_calibration_chunks`) -> the op's integer sums, as
    xnorpipe.deploy.reference.conv_integer64 defines them, exact in float64 (|sum| < 2^53). The
    pad values' share does not depend on the image: computed once."""
    top, left, bottom, right = conv.pads
    h, w = image_hw
    torch_conv = dict(stride=tuple(conv.strides), dilation=tuple(conv.dilations))
    outside = torch.ones(1, 1, h + top + bottom, w + left + right, dtype=torch.float64)
    outside[:, :, top:top + h, left:left + w] = 0
    padded = F.conv2d(outside, torch.from_numpy(pad_value.astype(np.float64)).unsqueeze(1), **torch_conv)
    kernel = torch.from_numpy(weight.astype(np.float64))
    return lambda centred: F.conv2d(centred, kernel, **torch_conv) + padded


def _calibration_chunks(model: ir.DeployModel, images: np.ndarray, z: np.ndarray, t: np.ndarray,
                        progress: Callable[[int, int], None] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per chunk of calibration images: the float layer's bits (relu(y) >= t, in float64: what
    the integer layer should reproduce) and the images centred on the zero points and padded as
    the op pads (float64 NCHW). Computed once for every candidate and both sums."""
    conv = model.nodes[0].op
    top, left, bottom, right = conv.pads
    chunks = []
    for start in range(0, len(images), _CHUNK):
        chunk = images[start:start + _CHUNK]
        y = float_conv2d64(normalised(chunk, model.mean, model.std), conv.weight, conv.bias, relu=conv.relu,
                           strides=conv.strides, pads=conv.pads, dilations=conv.dilations)
        centred = F.pad(torch.from_numpy(chunk.astype(np.float64) - z).permute(0, 3, 1, 2), (left, right, top, bottom))
        chunks.append((torch.from_numpy(y >= t.reshape(1, -1, 1, 1)), centred))
        if progress is not None:
            progress(min(start + _CHUNK, len(images)), len(images))
    return chunks


def quantize_first_layer(model: ir.DeployModel, images: np.ndarray, calibration: str,
                         progress: Callable[[int, int], None] | None = None) -> IntegerFirstLayer:
    """The integer first layer of `model` (see the module doc), its rounding and scales chosen on
    `images` (uint8 [N, H, W, C], e.g. the first training images); `calibration` names them in
    the metadata. `progress(done, total)` is called after each chunk of calibration images."""
    conv, threshold = _check_model(model)
    images = np.asarray(images)
    c = conv.in_channels
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != c or len(images) == 0:
        raise XnorpipeError(f"calibration images must be uint8 [N, H, W, {c}] with N >= 1, got "
                            f"{images.dtype} {list(images.shape)}")
    mean, std = np.asarray(model.mean, np.float64), np.asarray(model.std, np.float64)
    z = zero_points(mean)
    w = np.asarray(conv.weight, np.float64)
    m = w.shape[0]
    per_input = (1.0 / (255.0 * std)).reshape(1, c, 1, 1)
    w_centred = (w * per_input).reshape(m, -1)
    offset = np.asarray(conv.bias, np.float64) + (w * (z - 255.0 * mean).reshape(1, c, 1, 1) * per_input
                                                   ).sum(axis=(1, 2, 3))
    t = threshold.astype(np.float64)
    amax = np.abs(w_centred).max(axis=1)
    moment = _patch_moment(images, z, conv)

    n_cand = len(SCALE_LEVELS)
    q = np.zeros((n_cand, *w.shape), np.int8)
    pad_value = np.zeros((n_cand, m, *conv.kernel_shape), np.int16)
    thr = np.zeros((n_cand, m), np.int32)
    scale = np.zeros((n_cand, m))
    for k, level in enumerate(SCALE_LEVELS):
        s = amax / level
        constant = [_constant_bit(conv.relu, t[j], offset[j], s[j]) for j in range(m)]
        live = np.array([bit is None for bit in constant])
        thr[k] = [0 if bit else 1 for bit in constant]  # q = 0: acc = 0 >= 0 (always) or >= 1 (never)
        if not live.any():
            continue
        q_live = rounded(w_centred[live] / s[live, None], moment).reshape(-1, *w.shape[1:])
        q[k, live] = q_live
        pad_value[k, live] = np.clip(np.rint(np.einsum("mcij,c->mij", q_live, 255.0 * mean - z)), -2**15, 2**15 - 1)
        scale[k, live] = s[live]
        thr[k, live] = [integer_threshold(t[j], offset[j], s[j]) for j in np.flatnonzero(live)]

    chunks = _calibration_chunks(model, images, z, t, progress)
    sums = [_integer_sums(conv, images.shape[1:3], q[k], pad_value[k]) for k in range(n_cand)]
    flips = np.zeros((n_cand, m), np.int64)
    for want, centred in chunks:
        for k in range(n_cand):
            flips[k] += ((sums[k](centred) >= torch.from_numpy(thr[k].astype(np.float64)).view(1, -1, 1, 1)) != want
                         ).sum(dim=(0, 2, 3)).numpy()
    total = sum(want.numel() for want, _ in chunks)
    best = flips.argmin(axis=0)  # the first minimum: the full-range scale on ties
    pick = np.arange(m)
    layer = IntegerFirstLayer(
        weight=np.ascontiguousarray(q[best, pick]), x_zero_point=z,
        pad_value=np.ascontiguousarray(pad_value[best, pick]), threshold=thr[best, pick].astype(np.int32),
        margin=np.full(m, -1, np.int32), fine_weight=np.zeros(w.shape, np.int32),
        fine_pad_value=np.zeros(pad_value.shape[1:], np.int32), fine_threshold=np.zeros(m, np.int64),
        scale=scale[best, pick], offset=offset, kernel_shape=tuple(conv.kernel_shape), strides=tuple(conv.strides),
        pads=tuple(conv.pads), dilations=tuple(conv.dilations), calibration=calibration,
        calibration_images=len(images), flipped_bits=int(flips[best, pick].sum()),
        int8_flipped_bits=int(flips[best, pick].sum()), refined_bits=0, total_bits=int(total))
    _add_fine(layer, model, chunks, images.shape[1:3], w_centred, amax, offset, t, moment)
    return layer


def _add_fine(layer: IntegerFirstLayer, model: ir.DeployModel, chunks: list, image_hw: tuple[int, int],
              w_centred: np.ndarray, amax: np.ndarray, offset: np.ndarray, t: np.ndarray, moment: np.ndarray) -> None:
    """The fine weights, pad values and thresholds (FINE_LEVELS), the margins (MARGIN_SIGMAS of
    the int8 sum's rounding error), and the calibration images' counts of the two-level result."""
    conv = model.nodes[0].op
    m, c = layer.weight.shape[:2]
    mean = np.asarray(model.mean, np.float64)
    live = np.array([layer.scale[j] > 0 for j in range(m)])  # constant channels keep margin -1
    if live.any():
        fine_scale = amax[live] / FINE_LEVELS
        fine_q = rounded(w_centred[live] / fine_scale[:, None], moment, FINE_LEVELS)
        layer.fine_weight[live] = fine_q.reshape(-1, *layer.weight.shape[1:])
        layer.fine_pad_value[live] = np.rint(np.einsum("mcij,c->mij", layer.fine_weight[live].astype(np.float64),
                                                       255.0 * mean - layer.x_zero_point))
        layer.fine_threshold[live] = [integer_threshold(t[j], offset[j], s, 64)
                                      for j, s in zip(np.flatnonzero(live), fine_scale)]
        # rms of the int8 sum's error against W' / s, in its own unit
        error = layer.weight[live].reshape(int(live.sum()), -1) - w_centred[live] / layer.scale[live, None]
        sigma = np.sqrt(np.einsum("mk,kl,ml->m", error, moment, error))
        layer.margin[live] = np.ceil(MARGIN_SIGMAS * sigma).astype(np.int32) + 1
    # The two-level result on the calibration images (fine sums: |fine| <= 2^20 * 255 * C*kH*kW < 2^53)
    coarse = _integer_sums(conv, image_hw, layer.weight, layer.pad_value)
    fine = _integer_sums(conv, image_hw, layer.fine_weight, layer.fine_pad_value)
    threshold, margin, fine_threshold = (torch.from_numpy(np.asarray(a, np.float64)).view(1, -1, 1, 1)
                                         for a in (layer.threshold, layer.margin, layer.fine_threshold))
    flipped = refined = 0
    for want, centred in chunks:
        above = coarse(centred) - threshold
        in_margin = (above >= -margin) & (above <= margin)
        got = (above > margin) | (in_margin & (fine(centred) >= fine_threshold))
        flipped += int((got != want).sum())
        refined += int(in_margin.sum())
    layer.flipped_bits = flipped
    layer.refined_bits = refined


def calibrated_first_layer(model: ir.DeployModel, data=None,
                           progress: Callable[[int, int], None] | None = None) -> IntegerFirstLayer:
    """`quantize_first_layer` on the first CALIBRATION_IMAGES training images of `data` (any form
    `--data` takes), else on as many synthetic images (xnorpipe.sources)."""
    from xnorpipe.sources import calibration_tag, data_calibration_images, synthetic_calibration_images

    if data is None:
        images = synthetic_calibration_images(n=CALIBRATION_IMAGES)
    else:
        images = data_calibration_images(data, n=CALIBRATION_IMAGES)
    return quantize_first_layer(model, images, calibration_tag(images, data), progress)


def integer_layer(weight, x_zero_point, pad_value, threshold, margin=None, fine_weight=None, fine_pad_value=None,
                  fine_threshold=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)) -> IntegerFirstLayer:
    """An IntegerFirstLayer from the op's tensors alone (op-level tests): no
    refinement unless a margin is given (margin -1, fine tensors 0), no calibration."""
    m, _, kh, kw = np.shape(weight)
    layer = IntegerFirstLayer(
        weight=np.asarray(weight), x_zero_point=np.asarray(x_zero_point), pad_value=np.asarray(pad_value),
        threshold=np.asarray(threshold),
        margin=np.full(m, -1, np.int32) if margin is None else np.asarray(margin),
        fine_weight=np.zeros(np.shape(weight), np.int32) if fine_weight is None else np.asarray(fine_weight),
        fine_pad_value=np.zeros((m, kh, kw), np.int32) if fine_pad_value is None else np.asarray(fine_pad_value),
        fine_threshold=np.zeros(m, np.int64) if fine_threshold is None else np.asarray(fine_threshold),
        scale=np.zeros(m), offset=np.zeros(m), kernel_shape=(kh, kw), strides=tuple(strides), pads=tuple(pads),
        dilations=tuple(dilations), calibration="none", calibration_images=0, flipped_bits=0, int8_flipped_bits=0,
        refined_bits=0, total_bits=0)
    return layer
