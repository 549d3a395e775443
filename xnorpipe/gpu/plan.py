"""Pure-Python launch arithmetic of the CUDA XnorConv2d kernels (plugins/cuda/xnor_conv2d.cu).

Shared by the CuPy launcher (runtime/torch_xnor.py) and the TensorRT AOT plugin
(gpu/trt_plugin.py), and tested without a GPU. The constants mirror the #defines of the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BLOCK_THREADS = 128
BLOCK_PIXELS = 64  # GEMM rows (output pixels) per block
BLOCK_FILTERS = 64
TAPS_PER_STAGE = 9
SMEM_LIMIT = 48 * 1024  # without opting in; TensorRT's AOT launch cannot opt in

KERNEL_BASENAME = "xnor_conv2d"
KERNEL_ARCHS = (75, 80, 86, 89, 90)  # plugins/cuda/CMakeLists.txt XNORPIPE_CUDA_ARCHS
MMA_KERNEL = "xnor_conv2d_mma"  # binary tensor cores, sm_80 .. sm_9x
POPC_KERNEL = "xnor_conv2d_popc"  # any sm_75+
KERNELS = (MMA_KERNEL, POPC_KERNEL)


def conv_output_size(size, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int):
    """ONNX Conv output extent. `size` may be an int or a TensorRT shape expression."""
    return (size + (pad_begin + pad_end - dilation * (kernel - 1) - 1)) // stride + 1


@dataclass(frozen=True)
class ConvAttrs:
    kernel_shape: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    relu: bool = False

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = (self.kernel_shape, self.strides,
                                                          self.pads, self.dilations)
        return (conv_output_size(h, kh, sh, pt, pb, dh), conv_output_size(w, kw, sw, pl, pr, dw))


def conv_attrs(kernel_shape: Sequence[int], strides: Sequence[int] | None = None,
               pads: Sequence[int] | None = None, dilations: Sequence[int] | None = None,
               group: int = 1, relu: int | bool = 0) -> ConvAttrs:
    """Validate the op's attributes (ONNX Conv names and defaults); ValueError if malformed."""
    def ints(name, v, n, lo):
        v = tuple(int(a) for a in v)
        if len(v) != n or any(a < lo for a in v):
            raise ValueError(f"XnorConv2d attribute {name} must be {n} ints >= {lo}, got {list(v)}")
        return v

    return ConvAttrs(kernel_shape=ints("kernel_shape", kernel_shape, 2, 1),
                     strides=ints("strides", strides if strides is not None else (1, 1), 2, 1),
                     pads=ints("pads", pads if pads is not None else (0, 0, 0, 0), 4, 0),
                     dilations=ints("dilations", dilations if dilations is not None else (1, 1), 2, 1),
                     group=ints("group", (group,), 1, 1)[0], relu=bool(int(relu)))


def _pow2ceil(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def footprint(tile: int, kernel: int, stride: int, dilation: int) -> int:
    """Input rows (or columns) that a tile of `tile` output rows reads."""
    return (tile - 1) * stride + (kernel - 1) * dilation + 1


def smem_bytes(tile_h: int, tile_w: int, a: ConvAttrs) -> int:
    (kh, kw), (sh, sw), (dh, dw) = a.kernel_shape, a.strides, a.dilations
    words = footprint(tile_h, kh, sh, dh) * footprint(tile_w, kw, sw, dw) * 8
    words += min(kh * kw, TAPS_PER_STAGE) * BLOCK_FILTERS * 8
    return 4 * words


def choose_tile(ho: int, wo: int, a: ConvAttrs) -> tuple[int, int]:
    """Output tile (TH, TW), TH*TW <= 64: 8x8 unless the output is smaller or the input
    footprint would not fit in shared memory (large kernel/stride/dilation)."""
    tw = min(8, _pow2ceil(max(wo, 1)))
    th = min(BLOCK_PIXELS // tw, _pow2ceil(max(ho, 1)))
    while smem_bytes(th, tw, a) > SMEM_LIMIT:
        if th >= tw and th > 1:
            th //= 2
        elif tw > 1:
            tw //= 2
        else:
            raise ValueError(f"XnorConv2d kernel {a.kernel_shape} with dilation {a.dilations} "
                             "needs more shared memory than the CUDA kernel may use")
    return th, tw


@dataclass(frozen=True)
class LaunchPlan:
    kernel_args: tuple[int, ...]  # the int scalars between the input and output pointers
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    smem_bytes: int
    out_shape: tuple[int, int, int, int]
    tile: tuple[int, int]


def launch_plan(x_shape: Sequence[int], num_filters: int, a: ConvAttrs,
                tile: tuple[int, int] | None = None) -> LaunchPlan:
    """Grid, block, shared memory and scalar arguments of one kernel launch."""
    n, c, h, w = (int(v) for v in x_shape)
    m = int(num_filters)
    if c % a.group or m % a.group:
        raise ValueError(f"channels {c} and filters {m} must be multiples of group {a.group}")
    ho, wo = a.output_hw(h, w)
    if ho < 1 or wo < 1:
        raise ValueError(f"XnorConv2d output would be empty: input {h}x{w}, kernel "
                         f"{a.kernel_shape}, pads {a.pads}, dilations {a.dilations}")
    th, tw = tile if tile is not None else choose_tile(ho, wo, a)
    if th < 1 or tw < 1 or th * tw > BLOCK_PIXELS:
        raise ValueError(f"tile {th}x{tw} must hold 1..{BLOCK_PIXELS} pixels")
    smem = smem_bytes(th, tw, a)
    if smem > SMEM_LIMIT:
        raise ValueError(f"tile {th}x{tw} needs {smem} bytes of shared memory (> {SMEM_LIMIT})")
    nfb = -(-(m // a.group) // BLOCK_FILTERS)
    grid_x = n * -(-ho // th) * -(-wo // tw) * nfb
    if grid_x >= 2**31 or a.group > 65535:
        raise ValueError("XnorConv2d problem too large for one launch")
    (kh, kw), (sh, sw), (pt, pl, _, _), (dh, dw) = a.kernel_shape, a.strides, a.pads, a.dilations
    args = (n, c, h, w, m, ho, wo, kh, kw, sh, sw, pt, pl, dh, dw, a.group, int(a.relu), th, tw)
    return LaunchPlan(kernel_args=args, grid=(grid_x, a.group, 1), block=(BLOCK_THREADS, 1, 1),
                      smem_bytes=smem, out_shape=(n, m, ho, wo), tile=(th, tw))


def select_kernel(capability: tuple[int, int], archs: Sequence[int] = KERNEL_ARCHS,
                  kernel: str = "auto") -> tuple[int, str]:
    """(arch of the PTX/cubin to load, kernel name) for a device of `capability`.

    Binary tensor cores (mma .b1) exist on sm_80 .. sm_9x only; sm_100+ has none, and a PTX
    holding the mma kernel would not JIT there, so those devices get the sm_75 PTX (popc only).
    """
    cc = capability[0] * 10 + capability[1]
    if cc < 75:
        raise ValueError(f"compute capability {capability[0]}.{capability[1]} is below 7.5, "
                         "the oldest target of the CUDA kernels")
    has_mma = 80 <= cc < 100
    if kernel not in ("auto", "mma", "popc"):
        raise ValueError(f"kernel must be auto, mma or popc, got {kernel!r}")
    if kernel == "mma" and not has_mma:
        raise ValueError(f"the tensor-core kernel needs sm_80..sm_9x, this GPU is sm_{cc}")
    usable = [a for a in archs if a <= cc and (has_mma or a < 80)]
    if not usable:
        raise ValueError(f"no CUDA kernel build fits sm_{cc} (built: {', '.join(map(str, archs))})")
    arch = max(usable)
    use_mma = kernel == "mma" or (kernel == "auto" and has_mma and arch >= 80)
    if use_mma and arch < 80:
        raise ValueError(f"the tensor-core kernel needs an sm_80+ build; built: {list(archs)}")
    return arch, MMA_KERNEL if use_mma else POPC_KERNEL


def cubin_fits(arch: int, capability: tuple[int, int]) -> bool:
    """SASS runs on the same major version with an equal or higher minor."""
    return arch // 10 == capability[0] and arch % 10 <= capability[1]
