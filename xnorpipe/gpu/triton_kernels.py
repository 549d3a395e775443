"""Triton kernels of xnorpipe's ops (docs/XNORCONV2D.md): `XnorConv2d` v1 with the input
binarization fused, `XnorConv2dBits`, `XnorConv2dBitsBinarize`, `BitMaxPool` and `Binarize`:
the wrappers, the tile table and the launch descriptions. The kernels themselves (one
@triton.jit function per op) are in `xnorpipe/gpu/triton_jit.py`.

The wrappers launch the kernels on CUDA tensors (compiled by Triton), and on CPU tensors in
Triton's interpreter (NumPy semantics: how CI checks them bit-exactly against
`xnorpipe.deploy.reference`); `xnorpipe.gpu.triton_aot` compiles the same kernels ahead of
time to PTX and cubin for TensorRT.

Kernel parameters, in TensorRT's AOT plugin order: the op's ONNX inputs as pointers, then the
int32 scalars (`LaunchSpec.scalars`), then the output pointer, then tl.constexpr tile sizes
(Triton appends two pointer params of its own, see triton_aot). Grid: (batch * gx, gy, gz),
`LaunchSpec.grid_per_image` = (gx, gy, gz); no kernel takes the batch size (program ids
decode the image), so one compiled kernel serves every batch.

Convolutions are an implicit GEMM of (filters x output pixels) tiles over (taps x 32-channel
words), in one of two algorithms (`algo`, a constexpr of the same kernel; the tile table picks
one per layer, `config={"algo": ...}` overrides it):
- "popcount" (CUDA cores): per word, a broadcast XOR of the tile's input words [P] with its
  weight words [M], masked, then a SWAR popcount (plain integer ops: exact in the interpreter,
  one `popc` in PTX) added into int32 accumulators. Padding taps and bits past C/group are
  masked out of the XOR (`(a ^ b) & mask`, one LOP3), so sum = valid_taps * Cg - 2 * popcount.
- "dot" (int8 tensor cores): bits stay packed in memory; each step unpacks BLOCK_K (tap, word)
  slots of weights and inputs in registers to int8 +1/-1 (a few integer ops per 4 values, see
  triton_jit._unpack_pm1) and `tl.dot` accumulates in int32: exact, |sum| <= taps * C < 2**24
  (checked by launch_spec). Zeros stand for padding taps, so the contract's zero padding costs
  nothing; channels past C/group are -1 on both sides and subtracted afterwards.
Bit inputs with group > 1: group g's channels g*C/group .. sit wherever they are in the words;
where C/group is not a multiple of 32 (constexpr SPLIT_WORDS) each of the group's words is a
funnel shift of two input words, the second loaded only where the group reaches into it; whole-
word groups compile exactly as before (one load per word). `shuffle_output` (constexpr SHUFFLE)
maps filter m to its ChannelShuffle output channel in the epilogue: a float output stores the
row there, a bit output ORs each set bit into its word atomically (the bits of one word come
from several groups, hence several programs), into an output the launcher zeroes
(`LaunchSpec.zeroed_output`; an AOT launch does not, so triton_aot refuses that kernel).
The float-input op binarizes X inside the kernel (x >= threshold, NaN -> 0; "dot" straight to
+-1 int8): no bit tensor is written, and the op stays one launch (TensorRT's AOT plugin runs
one kernel).
Output: scale * float(sum), then + bias, two roundings: every launch is compiled with
enable_fp_fusion=False, which emits `mul.rn.f32` / `add.rn.f32`, and PTX with an explicit
rounding mode is never contracted into an FMA, not even by the driver's JIT. Then relu as
`where(y < 0, 0, y)`, which keeps -0.0 and NaN like torch.clamp_min.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import math
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

try:
    import triton
except ImportError as e:  # a clear message for the runtimes that import this lazily
    raise ImportError(f"xnorpipe.gpu.triton_kernels needs Triton (pip install triton): {e}") from e

from xnorpipe.errors import XnorpipeError
from xnorpipe.gpu import plan

OPS = ("XnorConv2d", "XnorConv2dBits", "XnorConv2dBitsBinarize", "BitMaxPool", "Binarize")
CONV_OPS = OPS[:3]
KERNEL_NAMES = {
    "XnorConv2d": "xnor_conv2d_kernel",
    "XnorConv2dBits": "xnor_conv2d_bits_kernel",
    "XnorConv2dBitsBinarize": "xnor_conv2d_bits_binarize_kernel",
    "BitMaxPool": "bit_max_pool_kernel",
    "Binarize": "binarize_kernel",
}
# The int32 params of each kernel, in order (triton_jit.py's signatures).
CONV_SCALARS = ("C", "H", "W", "M", "Ho", "Wo", "KH", "KW", "SH", "SW", "PT", "PL", "DH", "DW", "G", "RELU")
POOL_SCALARS = ("NW", "H", "W", "Ho", "Wo", "KH", "KW", "SH", "SW", "PT", "PL")
BINARIZE_SCALARS = ("C", "HW")
# Compile options of every launch, JIT and AOT: no FMA contraction (the contract's two roundings).
COMPILE_OPTIONS = {"enable_fp_fusion": False}
INT32_MAX = 2**31 - 1
GRID_YZ_MAX = 65535


class KernelArgumentError(XnorpipeError, ValueError):
    """Bad shapes, dtypes or attributes for a kernel: one line (a ValueError too)."""


# ============================================================ one kernel module per mode
# @triton.jit returns an interpreter function when TRITON_INTERPRET is set *at decoration*,
# else a JIT function. CPU tensors need the first, CUDA tensors and AOT compiles the second,
# so triton_jit.py is executed as two private modules, each under its own setting: both kinds
# exist in one process whatever the environment and whichever test imported this first.

_JIT_SOURCE = Path(__file__).with_name("triton_jit.py")
_modules: dict[bool, object] = {}
_modules_lock = threading.Lock()
# The interpreter keeps its grid position and language patches in globals: one launch at a time.
_interpreter_lock = threading.Lock()


def kernels(interpret: bool):
    """The module of kernels that run in Triton's interpreter (`interpret=True`) or are
    compiled by Triton (`interpret=False`)."""
    from triton.runtime.interpreter import InterpretedFunction

    interpret = bool(interpret)
    with _modules_lock:
        mod = _modules.get(interpret)
        if mod is None:
            name = f"{__package__}._triton_jit_{'interpreted' if interpret else 'compiled'}"
            spec = importlib.util.spec_from_file_location(name, _JIT_SOURCE)
            mod = importlib.util.module_from_spec(spec)
            with triton.knobs.runtime.scope():  # restores the knob and TRITON_INTERPRET after
                triton.knobs.runtime.interpret = interpret
                spec.loader.exec_module(mod)
            if isinstance(mod.xnor_conv2d_kernel, InterpretedFunction) != interpret:
                raise RuntimeError(f"this Triton ({triton.__version__}) ignored TRITON_INTERPRET={int(interpret)}")
            sys.modules[name] = mod
            _modules[interpret] = mod
    return mod


@contextlib.contextmanager
def _interpreter_without_overflow_checks():
    """Triton's interpreter computes an int64 overflow check around every int32 add, sub and
    mul (`sanitize_overflow`) and then, unless debug is on, asserts nothing: half of its time
    on these kernels. Switch the checks off while they are void (restored after). Private
    Triton state: left alone if it is not where Triton 3.9 keeps it."""
    try:
        from triton.runtime.interpreter import interpreter_builder as builder

        old = builder.options
        fast = None if old.debug or not old.sanitize_overflow else dataclasses.replace(old, sanitize_overflow=False)
    except (ImportError, AttributeError, TypeError):
        fast = None
    if fast is None:
        yield
        return
    builder.options = fast
    try:
        yield
    finally:
        builder.options = old


def interpreted(device: torch.device | str) -> bool:
    """Do kernels on `device` run in Triton's interpreter? Everything but CUDA does, and CUDA
    too when TRITON_INTERPRET is set (Triton's own switch)."""
    return torch.device(device).type != "cuda" or bool(triton.knobs.runtime.interpret)


# ================================================================ launch descriptions


@dataclass(frozen=True)
class LaunchSpec:
    """Everything about one launch but the tensors and the batch: what the wrappers launch and
    `triton_aot.compile_op` compiles."""

    op: str
    kernel: str  # the @triton.jit function's name (also the PTX entry)
    pointer_types: tuple[str, ...]  # Triton types of the pointer params: the op's inputs, then its output
    scalar_names: tuple[str, ...]
    scalars: tuple[int, ...]  # int32 params between the input and output pointers
    constexprs: dict = field(hash=False)
    num_warps: int = 4
    num_stages: int = 1
    grid_per_image: tuple[int, int, int] = (1, 1, 1)
    out_shape: tuple[int, int, int] = (1, 1, 1)  # per image
    out_dtype: str = "float32"
    # The kernel ORs bits into its output (XnorConv2dBitsBinarize with shuffle_output): the
    # launcher zeroes the output first.
    zeroed_output: bool = False

    def config(self) -> dict:
        """The tile configuration (what `kernel_config` returns)."""
        tiles = {k: v for k, v in self.constexprs.items() if k not in ("ALGO", "SPLIT_WORDS", "SHUFFLE")}
        algo = {"algo": self.constexprs["ALGO"]} if "ALGO" in self.constexprs else {}
        return {"op": self.op, "kernel": self.kernel, **algo, **tiles, "num_warps": self.num_warps,
                "num_stages": self.num_stages, "grid_per_image": list(self.grid_per_image)}

    @property
    def algo(self) -> str | None:
        """The convolution algorithm ("popcount" or "dot"); None for the other ops."""
        return self.constexprs.get("ALGO")


def _fail(op: str, what: str):
    raise KernelArgumentError(f"{op}: {what}")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _ints(op: str, name: str, v, n: int, lo: int) -> tuple[int, ...]:
    what = f"an int >= {lo}" if n == 1 else f"{n} ints >= {lo}"
    try:
        out = tuple(int(a) for a in v)
        if any(isinstance(a, float) and a != int(a) for a in v):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        _fail(op, f"{name} must be {what}, got {v!r}")
    if len(out) != n or any(a < lo for a in out) or any(a > INT32_MAX for a in out):
        _fail(op, f"{name} must be {what} (and < 2**31), got {out[0] if n == 1 and out else list(out)}")
    return out


def _or(value, default):
    """An attribute's value, or its ONNX default when absent (None)."""
    return default if value is None else value


def _pow2_at_least(v: int, lo: int, cap: int) -> int:
    return max(lo, min(cap, triton.next_power_of_2(v)))


# The largest block tensor a program may hold (launch_spec refuses more): the GPU's tables stay
# far below it; the interpreter's tiles are chosen up to it.
MAX_TILE_ELEMENTS = 2**16
# The interpreter's fixed cost of one program step (a few dozen NumPy calls), in elements of
# per-element work (measured on nin_xnornet-size layers: a step of 2**14 elements costs about
# twice an empty one).
_INTERPRETER_STEP_COST = 2**14
# Constexprs that follow from the op and its attributes, never from `config`.
FIXED_CONSTEXPRS = ("GROUPED", "ALGO", "SPLIT_WORDS", "SHUFFLE")


def _interpreter_tiles(axes: dict[str, tuple[int, int, int]], tile_elements, units=None) -> dict[str, int]:
    """The interpreter's tile: per BLOCK_ axis (extent, smallest, largest) a power of two, the
    combination whose `tile_elements(tiles)` is within MAX_TILE_ELEMENTS and whose program
    steps (`units(tiles)`, default the product of ceil(extent / tile)) cost least, each step
    costing its elements (padding included) plus a fixed overhead. The interpreter runs NumPy
    per program step, so the tiles come out as large as the limit allows unless padding
    outweighs a step."""
    import itertools

    names = list(axes)
    choices = []
    for extent, lo, hi in axes.values():
        top = _pow2_at_least(extent, lo, hi)
        choices.append([1 << k for k in range(lo.bit_length() - 1, top.bit_length())])
    best, best_cost = None, None
    for combo in itertools.product(*choices):
        tiles = dict(zip(names, combo))
        elements = tile_elements(tiles)
        if elements > MAX_TILE_ELEMENTS:
            continue
        steps = units(tiles) if units else math.prod(_cdiv(axes[k][0], v) for k, v in tiles.items())
        cost = (steps * (_INTERPRETER_STEP_COST + elements), elements)
        if best_cost is None or cost < best_cost:
            best, best_cost = tiles, cost
    if best is None:  # the smallest tiles exceed the limit: not reachable with the tables' bounds
        raise AssertionError(f"no interpreter tile within {MAX_TILE_ELEMENTS} elements for {axes}")
    return best


def _tile_elements(op: str, algo: str | None, tiles: dict) -> int:
    """Elements of a program's largest block tensor: popcount's [K, M, P] XOR, the dot's
    operands and accumulator (K word slots = 32 K int8 channels), Binarize's [W, 32, P] floats,
    BitMaxPool's [P] words."""
    if algo == "dot":
        bk, bm, bp = 32 * tiles["BLOCK_K"], tiles["BLOCK_M"], tiles["BLOCK_P"]
        return max(bm * bp, bk * bp, bm * bk)
    return math.prod(v for k, v in tiles.items() if k.startswith("BLOCK_")) * (32 if op == "Binarize" else 1)


def _override(op: str, table: dict, config: dict | None) -> dict:
    """The table's entries, with those of `config` (BLOCK_* powers of two, num_warps,
    num_stages; `algo` is applied by the caller, before the table is chosen) in their place."""
    cfg = dict(table)
    fixed = FIXED_CONSTEXPRS
    for key, value in (config or {}).items():
        if key == "algo" and "ALGO" in table:
            continue
        if key not in table and key not in ("num_warps", "num_stages") or key in fixed:
            choices = sorted(k for k in table if k not in fixed) + ["num_stages", "num_warps"]
            _fail(op, f"config: unknown or fixed entry {key!r}; choose from "
                      f"{sorted(choices + ['algo']) if 'ALGO' in table else choices}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(op, f"config: {key} must be a positive int, got {value!r}")
        if key != "num_stages" and value & (value - 1):
            _fail(op, f"config: {key} must be a power of two, got {value}")
        cfg[key] = value
    return cfg


# The convolution algorithms (`algo` of kernel_config, `config={"algo": ...}`):
# "popcount": XOR + popcount of bit words on the CUDA cores; "dot": int8 tensor-core dots of
# the bits unpacked to +-1 in registers. See `conv_algo` for which the table picks.
ALGOS = ("popcount", "dot")
# The one entry that decides between them: a layer runs "dot" when each group has at least
# this many filters. 64 is the smallest filter tile of the dot's table (and wgmma's M per warp
# group): with fewer filters per group, rows of every tensor-core tile are zeros and each
# unpacked input word feeds fewer filters. Set from the instruction counts of sm_80/sm_90
# builds (the dot issues 2-5x fewer instructions per binary MAC than popcount's popc-bound
# loop on nin_xnornet's layers), not from timings: the GPU session sweeps both algos per layer
# (`config={"algo": ...}`), and the measured crossover replaces it.
DOT_MIN_FILTERS_PER_GROUP = 64
# The dot's per-step cost outside the unpacking of its BLOCK_K word slots, in units of one
# slot's unpacking (address and mask arithmetic, barriers, loop bookkeeping: about 64 of the
# 233 SASS instructions per warp of a 64 x 128 x 2-slot step on sm_90, 84 per slot).
DOT_STEP_COST = 0.75


def conv_algo(num_filters: int, group: int = 1) -> str:
    """The algorithm the table picks for a convolution: "dot" where each of the `group` groups
    has >= DOT_MIN_FILTERS_PER_GROUP of the `num_filters` filters, else "popcount"."""
    return "dot" if num_filters // group >= DOT_MIN_FILTERS_PER_GROUP else "popcount"


def _dot_block_k(slots: int, choices=(1, 2, 4)) -> int:
    """Word slots per dot step: the fewest padded steps times per-step cost, ties to the
    smaller K (fewer registers and less shared memory)."""
    return min(choices, key=lambda k: (_cdiv(slots, k) * (DOT_STEP_COST + k), k))


@functools.lru_cache(maxsize=1024)
def _conv_config(op: str, m: int, cg: int, p: int, taps: int, group: int, interpret: bool, algo: str,
                 scattered_bits: bool = False) -> dict:
    """The tile table of the convolutions: (filters x pixels) tiles, BLOCK_K word slots per
    step. `config=` overrides any entry, for sweeps on a GPU.

    algo "popcount": BLOCK_K words of one tap XORed per step as a [K, M, P] broadcast.
    GPU (chosen from the PTX and ptxas resource usage of sm_80/sm_90 builds, not yet timed on a
    GPU): 64 filters x 64 pixels at 4 warps, 32 filters when M <= 32; BLOCK_K = 2 when the
    words per group are even (Triton then stages the weight words through shared memory: 16
    shared loads per 64 popc per thread, ~160 registers, no spills), else 1 (no masked word
    slots; one uniform global load per popc). The float-input op binarizes [K, 32, P] floats
    per step and grouped layers keep a second accumulator: 32 pixels and BLOCK_K = 1 there
    (~150-200 registers; 64 pixels spill). Bit-input layers with <= 32 filters a group take 32
    filters (80-96 registers, also where groups start inside words; 64 filters reach 128
    registers, where sm_90's ptxas spills).

    algo "dot": BLOCK_K (tap, word) slots of the filter = 32 * BLOCK_K int8 channels of K per
    step (one mma.sync m16n8k32 / wgmma k32 per slot). GPU: 64 filters x 128 pixels (64 when
    the image has 64) at 4 warps, 2 pipeline stages: one warp group, whose wgmma tile on sm_90
    is m64n128k32; 95-165 registers (float inputs: up to 220), no spills, <= 32 KiB of shared
    memory on sm_80..90 for nin_xnornet's layers (the float output's epilogue holds the tile in
    shared memory: 64 x 128 x 4 bytes; 128 x 128 would need 64 KiB, more than an AOT launch
    gets); 64 pixels at most with `scattered_bits` (a bit output ORed per filter, shuffle_output:
    with 128 the per-element output addresses take 255 registers and spill on sm_80/90).
    BLOCK_K: `_dot_block_k` for bit inputs (2 for nin_xnornet's 1x1 layers, 4 for its 3x3), at
    most 2 when grouped (the loop over a tile's groups around the step loop costs registers: 4
    slots reach 255 registers and spill on sm_80/89), 1 for float inputs (each slot loads and
    compares 32 floats per pixel; larger K costs registers and shared memory, not time).

    Interpreter: the largest tiles within MAX_TILE_ELEMENTS, for any layer size
    (`_interpreter_tiles`: up to 1024 pixels, 256 filters, 8 words of a tap (popcount) or 8
    slots (dot) per step), as NumPy runs a few big array ops faster than many small ones; small
    layers run one program per image (the masking of word slots past the end gets exercised,
    and the dot's step-to-step slot advance too). A grouped tile runs its groups one after the
    other, so its steps count once per group it spans."""
    nwg = _cdiv(cg, 32)
    slots = taps * nwg
    bits_out = op == "XnorConv2dBitsBinarize"
    grouped = group > 1
    if interpret:
        mg = m // group
        per_tap = algo != "dot"  # popcount steps through the words of one tap at a time

        def units(t: dict) -> int:
            bm = t["BLOCK_M"]
            group_steps = sum((min(m0 + bm, m) - 1) // mg - m0 // mg + 1 for m0 in range(0, m, bm))
            steps = taps * _cdiv(nwg, t["BLOCK_K"]) if per_tap else _cdiv(slots, t["BLOCK_K"])
            return _cdiv(p, t["BLOCK_P"]) * group_steps * steps

        tiles = _interpreter_tiles({"BLOCK_P": (p, 16, 1024), "BLOCK_M": (m, 32 if bits_out else 16, 256),
                                    "BLOCK_K": (nwg if per_tap else slots, 1, 8)},
                                   lambda t: _tile_elements(op, algo, t), units)
        return {**tiles, "GROUPED": grouped, "ALGO": algo}
    if algo == "dot":
        block_k = 1 if op == "XnorConv2d" else _dot_block_k(slots, (1, 2) if grouped else (1, 2, 4))
        return {"BLOCK_P": _pow2_at_least(p, 32, 64 if scattered_bits else 128), "BLOCK_M": 64, "BLOCK_K": block_k,
                "GROUPED": bool(grouped), "ALGO": algo, "num_warps": 4, "num_stages": 2}
    small = op == "XnorConv2d" or grouped
    block_k = 1 if small or nwg % 2 else 2
    # A grouped tile runs each of its groups over the whole tile: with at most 32 filters a
    # group, 32 rows waste none (bit inputs; the float-input op spills at 32 on sm_80, 64 not).
    narrow = m <= 32 or (grouped and op != "XnorConv2d" and m // group <= 32)
    return {"BLOCK_P": 32 if small else 64, "BLOCK_M": 32 if narrow else 64, "BLOCK_K": block_k,
            "GROUPED": bool(grouped), "ALGO": algo}


def launch_spec(op: str, *, input_shape: Sequence[int], num_filters: int | None = None,
                channels: int | None = None, config: dict | None = None, interpret: bool = False,
                **attrs) -> LaunchSpec:
    """Validate an op's per-image input shape and attributes; describe its launch.

    input_shape: (C, H, W) for float inputs, (words, H, W) for bit inputs. Conv ops take
    num_filters (M) and kernel_shape, strides, pads, dilations, group, relu; the bit-input
    convs also `channels` (C) and shuffle_output (0 or 1). BitMaxPool takes kernel_shape,
    strides, pads. `config` overrides entries of the tile table (BLOCK_*, num_warps,
    num_stages), e.g. for tuning sweeps; `interpret` picks the interpreter's table (what the
    wrappers use for CPU tensors)."""
    if op not in OPS:
        _fail("kernel_config", f"unknown op {op!r}; one of {', '.join(OPS)}")
    c_or_words, h, w = _ints(op, "input shape (C or words, H, W)", input_shape, 3, 1)
    if op in CONV_OPS:
        allowed = {"kernel_shape", "strides", "pads", "dilations", "group", "relu"}
        if op != "XnorConv2d":  # XnorConv2d v1 has no shuffle_output (docs/XNORCONV2D.md)
            allowed.add("shuffle_output")
        extra = set(attrs) - allowed
        if extra:
            _fail(op, f"unknown attribute(s) {sorted(extra)}")
        if "kernel_shape" not in attrs:
            _fail(op, "kernel_shape is required")
        relu = attrs.get("relu", 0)
        if relu not in (0, 1):  # True and False included
            _fail(op, f"relu must be 0 or 1, got {relu!r}")
        shuffle = attrs.get("shuffle_output", 0)
        if shuffle not in (0, 1):
            _fail(op, f"shuffle_output must be 0 or 1, got {shuffle!r}")
        a = plan.ConvAttrs(kernel_shape=_ints(op, "kernel_shape", attrs["kernel_shape"], 2, 1),
                           strides=_ints(op, "strides", _or(attrs.get("strides"), (1, 1)), 2, 1),
                           pads=_ints(op, "pads", _or(attrs.get("pads"), (0, 0, 0, 0)), 4, 0),
                           dilations=_ints(op, "dilations", _or(attrs.get("dilations"), (1, 1)), 2, 1),
                           group=_ints(op, "group", (attrs.get("group", 1),), 1, 1)[0], relu=bool(relu))
        if num_filters is None:
            _fail(op, "num_filters (M) is required")
        (m,) = _ints(op, "filters (W dim 0)", (num_filters,), 1, 1)
        if op == "XnorConv2d":
            if channels is not None and channels != c_or_words:
                _fail(op, f"channels {channels} differs from X's {c_or_words}")
            c = c_or_words
        else:
            if channels is None:
                _fail(op, "attribute 'channels' (>= 1) is required")
            (c,) = _ints(op, "attribute 'channels'", (channels,), 1, 1)
            if c_or_words != _cdiv(c, 32):
                _fail(op, f"X has {c_or_words} words per pixel, channels = {c} needs {_cdiv(c, 32)}")
        g = a.group
        if c % g:
            _fail(op, f"channels {c} not divisible by group {g}")
        if m % g:
            _fail(op, f"filters {m} must be a multiple of group {g}")
        if any(v > 2**20 for v in (*a.kernel_shape, *a.strides, *a.pads, *a.dilations)):
            _fail(op, "kernel_shape, strides, pads and dilations must be <= 2**20")
        ho, wo = a.output_hw(h, w)
        if ho < 1 or wo < 1:
            _fail(op, f"output size {ho}x{wo} <= 0 for input {h}x{w}, kernel {list(a.kernel_shape)}, "
                      f"pads {list(a.pads)}, dilations {list(a.dilations)}")
        nw_out = _cdiv(m, 32) if op == "XnorConv2dBitsBinarize" else m
        taps = a.kernel_shape[0] * a.kernel_shape[1]
        if (c * h * w > INT32_MAX or nw_out * ho * wo > INT32_MAX or m * taps * _cdiv(c // g, 32) > INT32_MAX
                or taps * (c // g) >= 2**24):
            _fail(op, "tensor too large for the kernels' int32 indexing")
        algo = (config or {}).get("algo", conv_algo(m, g))
        if algo not in ALGOS:
            _fail(op, f"config: algo must be one of {', '.join(map(repr, ALGOS))}, got {algo!r}")
        scattered = op == "XnorConv2dBitsBinarize" and bool(shuffle) and g > 1
        cfg = _override(op, _conv_config(op, m, c // g, ho * wo, taps, g, interpret, algo, scattered), config)
        if op != "XnorConv2d":
            # Group g's channels start inside a word unless every group is whole words; the
            # shuffle is the identity for one group.
            cfg.update(SPLIT_WORDS=g > 1 and (c // g) % 32 != 0, SHUFFLE=bool(shuffle) and g > 1)
        if op == "XnorConv2dBitsBinarize" and cfg["BLOCK_M"] % 32:
            _fail(op, f"BLOCK_M must be a multiple of 32, got {cfg['BLOCK_M']}")
        (kh, kw), (sh, sw), (pt, pl, _, _), (dh, dw) = a.kernel_shape, a.strides, a.pads, a.dilations
        scalars = (c, h, w, m, ho, wo, kh, kw, sh, sw, pt, pl, dh, dw, g, int(a.relu))
        scalar_names = CONV_SCALARS
        pointers = {"XnorConv2d": ("*fp32", "*i32", "*fp32", "*fp32", "*fp32", "*fp32"),
                    "XnorConv2dBits": ("*i32", "*i32", "*fp32", "*fp32", "*fp32"),
                    "XnorConv2dBitsBinarize": ("*i32", "*i32", "*fp32", "*fp32", "*fp32", "*i32")}[op]
        grid = (_cdiv(ho * wo, cfg["BLOCK_P"]) * _cdiv(m, cfg["BLOCK_M"]), 1, 1)
        out_shape = (nw_out, ho, wo)
        out_dtype = "int32" if op == "XnorConv2dBitsBinarize" else "float32"
        zeroed = op == "XnorConv2dBitsBinarize" and cfg["SHUFFLE"]
    elif op == "BitMaxPool":
        extra = set(attrs) - {"kernel_shape", "strides", "pads"}
        if extra:
            _fail(op, f"unknown attribute(s) {sorted(extra)}")
        if "kernel_shape" not in attrs:
            _fail(op, "kernel_shape is required")
        kh, kw = _ints(op, "kernel_shape", attrs["kernel_shape"], 2, 1)
        sh, sw = _ints(op, "strides", _or(attrs.get("strides"), (1, 1)), 2, 1)
        pt, pl, pb, pr = _ints(op, "pads", _or(attrs.get("pads"), (0, 0, 0, 0)), 4, 0)
        if pt >= kh or pb >= kh or pl >= kw or pr >= kw:
            _fail(op, "pads must be smaller than the kernel")
        ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
        if ho < 1 or wo < 1:
            _fail(op, f"output size {ho}x{wo} <= 0 for input {h}x{w}")
        nw = c_or_words
        if nw * h * w > INT32_MAX or nw * ho * wo > INT32_MAX or nw > GRID_YZ_MAX:
            _fail(op, "tensor too large for the kernel's indexing")
        cfg = _override(op, {"BLOCK_P": _pow2_at_least(ho * wo, 32, 1024 if interpret else 256)}, config)
        zeroed = False
        scalar_names = POOL_SCALARS
        scalars = (nw, h, w, ho, wo, kh, kw, sh, sw, pt, pl)
        pointers = ("*i32", "*i32")
        grid = (_cdiv(ho * wo, cfg["BLOCK_P"]), nw, 1)
        out_shape = (nw, ho, wo)
        out_dtype = "int32"
    else:  # Binarize
        if attrs:
            _fail(op, f"unknown attribute(s) {sorted(attrs)}")
        c = c_or_words
        nw = _cdiv(c, 32)
        if c * h * w > INT32_MAX or nw > GRID_YZ_MAX:
            _fail(op, "tensor too large for the kernel's indexing")
        # GPU: [128, 1, 32] floats per program (32 per thread); interpreter: the largest tile.
        if interpret:
            table = _interpreter_tiles({"BLOCK_P": (h * w, 32, 1024), "BLOCK_W": (nw, 1, 8)},
                                       lambda t: _tile_elements(op, None, t))
        else:
            table = {"BLOCK_P": _pow2_at_least(h * w, 32, 128), "BLOCK_W": 1}
        cfg = _override(op, table, config)
        zeroed = False
        scalar_names = BINARIZE_SCALARS
        scalars = (c, h * w)
        pointers = ("*fp32", "*fp32", "*i32")
        grid = (_cdiv(h * w, cfg["BLOCK_P"]), _cdiv(nw, cfg["BLOCK_W"]), 1)
        out_shape = (nw, h, w)
        out_dtype = "int32"
    elements = _tile_elements(op, cfg.get("ALGO"), cfg)
    if elements > MAX_TILE_ELEMENTS:
        tiles = " x ".join(f"{k} {v}" for k, v in cfg.items() if k.startswith("BLOCK_"))
        _fail(op, f"config: {tiles} makes a block of {elements} elements, more than {MAX_TILE_ELEMENTS}")
    num_warps = int(cfg.pop("num_warps", 4))
    num_stages = int(cfg.pop("num_stages", 1))
    if num_warps not in (1, 2, 4, 8, 16, 32):
        _fail(op, f"num_warps must be a power of 2 <= 32, got {num_warps}")
    return LaunchSpec(op=op, kernel=KERNEL_NAMES[op], pointer_types=pointers, scalar_names=scalar_names,
                      scalars=scalars, constexprs=cfg, num_warps=num_warps, num_stages=num_stages,
                      grid_per_image=grid, out_shape=out_shape, out_dtype=out_dtype, zeroed_output=zeroed)


def kernel_config(op: str, **shape_and_attrs) -> dict:
    """The tile configuration the wrappers choose for a shape: BLOCK_* constexprs, num_warps,
    num_stages, the kernel name and grid per image. Arguments as `launch_spec`."""
    return launch_spec(op, **shape_and_attrs).config()


# ============================================================================ wrappers


def _tensor(op: str, name: str, t, dtype: torch.dtype, ndim: int, device=None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        _fail(op, f"{name} must be {str(dtype).replace('torch.', '')}, got {str(t.dtype).replace('torch.', '')}")
    if t.dim() != ndim:
        _fail(op, f"{name} must have {ndim} dimensions, got shape {list(t.shape)}")
    if device is not None and t.device != device:
        _fail(op, f"{name} is on {t.device}, X on {device}: all tensors must be on one device")
    return t.contiguous()


def _vector(op: str, name: str, t, length: int, device) -> torch.Tensor:
    t = _tensor(op, name, t, torch.float32, 1, device)
    if t.shape[0] != length:
        _fail(op, f"{name} must be [{length}], got {list(t.shape)}")
    return t


def _launch(spec: LaunchSpec, batch: int, device: torch.device, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    dtype = torch.int32 if spec.out_dtype == "int32" else torch.float32
    out = (torch.zeros if spec.zeroed_output else torch.empty)((batch, *spec.out_shape), dtype=dtype, device=device)
    if batch == 0:
        return out
    gx, gy, gz = spec.grid_per_image
    if batch * gx > INT32_MAX or gy > GRID_YZ_MAX or gz > GRID_YZ_MAX:
        _fail(spec.op, f"batch {batch} needs a grid of {batch * gx} x {gy} x {gz} programs: too many for one launch")
    interpret = interpreted(device)
    kernel = getattr(kernels(interpret), spec.kernel)
    args = (*inputs, *spec.scalars, out)
    if interpret:
        # NumPy warns where IEEE arithmetic makes NaN (inf * 0): the contract's semantics.
        with _interpreter_lock, _interpreter_without_overflow_checks(), np.errstate(all="ignore"):
            kernel[(batch * gx, gy, gz)](*args, **spec.constexprs)
    else:
        with torch.cuda.device(device):
            kernel[(batch * gx, gy, gz)](*args, **_jit_options(spec))
    return out


def _jit_options(spec: LaunchSpec) -> dict:
    """The keyword arguments of a compiled launch: constexprs and compile options."""
    return {**spec.constexprs, "num_warps": spec.num_warps, "num_stages": spec.num_stages, **COMPILE_OPTIONS}


_POINTER_DTYPES = {"*fp32": torch.float32, "*i32": torch.int32}


def warmup(spec: LaunchSpec, device: torch.device | str = "cuda") -> None:
    """Compile `spec`'s kernel for the CUDA `device` without launching it: Triton's JIT with the
    arguments a launch passes (dtypes for the tensors, which Triton takes as 16-byte aligned,
    as torch's allocations are), so it lands in Triton's on-disk cache under the key a launch of
    the same configuration looks up, in any process. Raises what the compile raises."""
    kernel = getattr(kernels(False), spec.kernel)
    pointers = [_POINTER_DTYPES[t] for t in spec.pointer_types]
    with torch.cuda.device(device):
        kernel.warmup(*pointers[:-1], *spec.scalars, pointers[-1], grid=(1, 1, 1), **_jit_options(spec))


def _conv_weights(op: str, w, device) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    w = _tensor(op, "W", w, torch.int32, 4, device)
    if w.shape[0] < 1:
        _fail(op, f"W has no filters: {list(w.shape)}")
    return w, tuple(w.shape)


def xnor_conv2d(x, w, threshold, scale, bias, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
                relu=False, config: dict | None = None) -> torch.Tensor:
    """XnorConv2d v1: X float32 [N, C, H, W], W int32 [M, kH, kW, ceil((C/group)/32)],
    threshold float32 [C], scale and bias float32 [M] -> Y float32 [N, M, Ho, Wo]."""
    op = "XnorConv2d"
    x = _tensor(op, "X", x, torch.float32, 4)
    device = x.device
    w, (m, kh, kw, nwg) = _conv_weights(op, w, device)
    n, c, h, wd = x.shape
    spec = launch_spec(op, input_shape=(c, h, wd), num_filters=m, kernel_shape=(kh, kw), strides=strides,
                       pads=pads, dilations=dilations, group=group, relu=relu, config=config,
                       interpret=interpreted(device))
    g = spec.scalars[CONV_SCALARS.index("G")]
    if nwg != _cdiv(c // g, 32):
        _fail(op, f"W shape {list(w.shape)} does not match [M, {kh}, {kw}, {_cdiv(c // g, 32)}] for C/group = {c // g}")
    threshold = _vector(op, "threshold", threshold, c, device)
    scale = _vector(op, "scale", scale, m, device)
    bias = _vector(op, "bias", bias, m, device)
    return _launch(spec, n, device, (x, w, threshold, scale, bias))


def xnor_conv2d_bits(xp, w, scale, bias, *, channels, output_threshold=None, strides=(1, 1), pads=(0, 0, 0, 0),
                     dilations=(1, 1), group=1, relu=False, shuffle_output=False,
                     config: dict | None = None) -> torch.Tensor:
    """XnorConv2dBits: Xp int32 bits [N, ceil(C/32), H, W] (C = `channels`) -> Y float32
    [N, M, Ho, Wo]; with `output_threshold` (float32 [M]), XnorConv2dBitsBinarize -> int32
    bits [N, ceil(M/32), Ho, Wo]. Group g reads channels g*C/group .. wherever they sit in the
    words; `shuffle_output` shuffles the output channels as ChannelShuffle(group) (W, scale and
    bias in grouped order, output_threshold per output channel)."""
    op = "XnorConv2dBits" if output_threshold is None else "XnorConv2dBitsBinarize"
    xp = _tensor(op, "Xp", xp, torch.int32, 4)
    device = xp.device
    w, (m, kh, kw, nwg) = _conv_weights(op, w, device)
    n, words, h, wd = xp.shape
    spec = launch_spec(op, input_shape=(words, h, wd), num_filters=m, channels=channels, kernel_shape=(kh, kw),
                       strides=strides, pads=pads, dilations=dilations, group=group, relu=relu,
                       shuffle_output=shuffle_output, config=config, interpret=interpreted(device))
    c, g = spec.scalars[0], spec.scalars[CONV_SCALARS.index("G")]
    if nwg != _cdiv(c // g, 32):
        _fail(op, f"W shape {list(w.shape)} does not match [M, {kh}, {kw}, {_cdiv(c // g, 32)}] for C/group = {c // g}")
    inputs = [xp, w, _vector(op, "scale", scale, m, device), _vector(op, "bias", bias, m, device)]
    if output_threshold is not None:
        inputs.append(_vector(op, "output_threshold", output_threshold, m, device))
    return _launch(spec, n, device, inputs)


def bit_max_pool(xp, *, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0), config: dict | None = None) -> torch.Tensor:
    """BitMaxPool: int32 bits [N, words, H, W] -> [N, words, Ho, Wo], word-wise OR over each
    window's in-image taps (ONNX MaxPool geometry, floor mode; pads [top, left, bottom, right])."""
    op = "BitMaxPool"
    xp = _tensor(op, "Xp", xp, torch.int32, 4)
    n, words, h, w = xp.shape
    spec = launch_spec(op, input_shape=(words, h, w), kernel_shape=kernel_shape, strides=strides, pads=pads,
                       config=config, interpret=interpreted(xp.device))
    return _launch(spec, n, xp.device, (xp,))


def binarize(x, threshold, *, config: dict | None = None) -> torch.Tensor:
    """Binarize: X float32 [N, C, H, W], threshold float32 [C] -> int32 bits
    [N, ceil(C/32), H, W]; bit = x >= threshold[c] (NaN: 0), bits past C are 0."""
    op = "Binarize"
    x = _tensor(op, "X", x, torch.float32, 4)
    n, c, h, w = x.shape
    spec = launch_spec(op, input_shape=(c, h, w), config=config, interpret=interpreted(x.device))
    return _launch(spec, n, x.device, (x, _vector(op, "threshold", threshold, c, x.device)))


__all__ = ["ALGOS", "CONV_OPS", "DOT_MIN_FILTERS_PER_GROUP", "MAX_TILE_ELEMENTS", "OPS", "KernelArgumentError",
           "LaunchSpec", "binarize", "bit_max_pool", "conv_algo", "interpreted", "kernel_config", "kernels",
           "launch_spec", "warmup", "xnor_conv2d", "xnor_conv2d_bits"]
