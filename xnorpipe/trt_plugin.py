"""TensorRT plugin `xnorpipe::XnorConv2d` (TensorRT >= 10.9, `tensorrt.plugin`).

A quickly deployable plugin with an ahead-of-time implementation: the engine build bakes the
PTX of plugins/cuda (the one for the build GPU's compute capability) and its launch
parameters into the engine, so a serialized engine runs in any TensorRT runtime (trtexec,
C++) without Python or a plugin library.

TensorRT's ONNX parser maps a node `XnorConv2d` of domain `xnorpipe` to this plugin; the
`aot` node attribute selects the AOT implementation (xnorpipe.gpu.trt_build adds it).
`register_plugin()` imports TensorRT; importing this module does not.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads the annotations as objects.

import threading
from typing import List, Tuple

import numpy as np
import numpy.typing as npt

from xnorpipe.gpu import plan as _plan

PLUGIN_ID = "xnorpipe::XnorConv2d"

_lock = threading.Lock()
_registered = False


def _const(expr):
    """The value of a build-time constant shape expression, else None."""
    if isinstance(expr, (int, np.integer)):
        return int(expr)
    try:
        return int(expr.constant_value()) if expr.is_constant else None
    except (RuntimeError, AttributeError):
        return None


def attrs_of(kernel_shape, strides, pads, dilations, group, relu) -> _plan.ConvAttrs:
    return _plan.conv_attrs([int(v) for v in np.asarray(kernel_shape).reshape(-1)],
                            [int(v) for v in np.asarray(strides).reshape(-1)],
                            [int(v) for v in np.asarray(pads).reshape(-1)],
                            [int(v) for v in np.asarray(dilations).reshape(-1)],
                            int(np.asarray(group).reshape(-1)[0]), int(np.asarray(relu).reshape(-1)[0]))


def output_shape(x_shape, num_filters, a: _plan.ConvAttrs) -> tuple:
    """[N, M, Ho, Wo] from the input shape; entries may be ints or shape expressions."""
    n, _, h, w = x_shape
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = a.kernel_shape, a.strides, a.pads, a.dilations
    return (n, num_filters, _plan.conv_output_size(h, kh, sh, pt, pb, dh),
            _plan.conv_output_size(w, kw, sw, pl, pr, dw))


def aot_launch(x_shape, num_filters, a: _plan.ConvAttrs, capability: tuple[int, int],
               archs) -> tuple[str, int, dict, list]:
    """Kernel name, PTX arch, launch parameters and int kernel arguments for the AOT plugin.

    Shape entries may be shape expressions (dynamic batch); C, H, W and M must be constants
    (they fix the tile and the grid's per-image part). Plain ints in, plain ints out: tested
    without TensorRT.
    """
    n, c, h, w = x_shape
    c, h, w, m = _const(c), _const(h), _const(w), _const(num_filters)
    if None in (c, h, w, m):
        raise ValueError("XnorConv2d TensorRT plugin needs static C, H, W and filters; only the batch may vary")
    probe = _plan.launch_plan((1, c, h, w), m, a)  # per-image part of the grid, tile, smem
    arch, kernel = _plan.select_kernel(capability, archs)
    args = list(probe.kernel_args)
    args[0] = n  # the batch: a shape expression under a dynamic profile
    params = {"grid_x": n * probe.grid[0], "grid_y": probe.grid[1], "grid_z": 1,
              "block_x": probe.block[0], "block_y": 1, "block_z": 1, "shared_mem": probe.smem_bytes}
    return kernel, arch, params, args


def register_plugin() -> None:
    """Register `xnorpipe::XnorConv2d` with TensorRT (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        _define()
        _registered = True


def _define() -> None:
    import tensorrt as trt
    import tensorrt.plugin as trtp

    from xnorpipe import native
    from xnorpipe.gpu.device import device_capability

    @trtp.register(PLUGIN_ID)
    def xnor_conv2d_desc(x: trtp.TensorDesc, w: trtp.TensorDesc, threshold: trtp.TensorDesc,
                         scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                         kernel_shape: npt.NDArray[np.int32], strides: npt.NDArray[np.int32],
                         pads: npt.NDArray[np.int32], dilations: npt.NDArray[np.int32],
                         group: int, relu: int) -> trtp.TensorDesc:
        a = attrs_of(kernel_shape, strides, pads, dilations, group, relu)
        xs = x.shape_expr
        shape = output_shape((xs[0], xs[1], xs[2], xs[3]), w.shape_expr[0], a)
        return trtp.from_shape_expr(shape, dtype=trt.float32)

    @trtp.autotune(PLUGIN_ID)
    def xnor_conv2d_autotune(x: trtp.TensorDesc, w: trtp.TensorDesc, threshold: trtp.TensorDesc,
                             scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                             outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        # X, W, threshold, scale, bias, Y: the contract's types, linear (NCHW) layout.
        return [trtp.AutoTuneCombination("FP32, INT32, FP32, FP32, FP32, FP32", "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def xnor_conv2d_aot(x, w, threshold, scale, bias, kernel_shape, strides, pads, dilations,
                        group, relu, outputs, tactic):
        a = attrs_of(kernel_shape, strides, pads, dilations, group, relu)
        xs = x.shape_expr
        kernel, arch, params, args = aot_launch((xs[0], xs[1], xs[2], xs[3]), w.shape_expr[0], a,
                                                device_capability(), native.cuda_kernel_archs("ptx"))
        with open(native.cuda_kernel_path(arch, "ptx"), "rb") as f:
            ptx = f.read()
        launch = trtp.KernelLaunchParams()
        for key, value in params.items():
            setattr(launch, key, value)
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in args])
        return kernel.encode(), ptx, launch, extra
