"""TensorRT plugins for xnorpipe's ops (TensorRT >= 10.9, `tensorrt.plugin` with `aot_impl`).

One quickly deployable plugin per op the TensorRT build keeps: `XnorConv2d`,
`XnorConv2dBits`, `XnorConv2dBitsBinarize`, `BitMaxPool` and `Binarize` (xnorpipe.gpu.trt_build
rewrites `ConvBinarize` and `AvgPoolBinarize` into standard ops plus `Binarize`). Each
`aot_impl` returns the PTX of the op's Triton kernel, compiled by xnorpipe.gpu.triton_aot for
the build GPU's compute capability, with its launch parameters and int32 arguments: the engine
bakes them in and runs without Python (trtexec, C++). `XnorConv2d` nodes with the attribute
`cuda_kernel=1` (`--gpu-kernels cuda`) get the hand-written kernel of plugins/cuda instead.

TensorRT launches an AOT kernel with (input pointers..., extra int32 arguments..., output
pointers...), and passes null for parameters it was not given: Triton's trailing scratch
pointers (global_scratch, profile_scratch) receive null, which is what Triton itself passes
when a kernel needs no scratch; a kernel that does need scratch is refused here.

TensorRT's ONNX parser maps a node `<op>` with attribute `plugin_namespace="xnorpipe"` to the
plugin `xnorpipe::<op>`; `aot=1` asks for the AOT implementation. The parser hands the node's
attributes to the plugin in the node's order, and the AOT implementation receives them
positionally in that order: trt_build writes them in the order of PLUGIN_ATTRS, which is the
order of the functions below. PLUGIN_ATTRS, PLUGIN_INPUTS, the defaults, io types and bit outputs
are read from the op table (xnorpipe.deploy.onnx.ops); the signatures below must match it
(tests/test_onnx_ops.py checks them). `register_plugins()` imports TensorRT; importing this module
does not. Everything but the decorated functions is plain Python, tested without TensorRT.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads the annotations as objects.

import threading

import numpy as np
import numpy.typing as npt
from onnx import TensorProto

from xnorpipe.deploy.onnx.ops import OPS
from xnorpipe.gpu import plan as _plan

PLUGIN_NAMESPACE = "xnorpipe"
# the ops with a plugin: trt_build splits ConvBinarize and AvgPoolBinarize, refuses ConvIntegerBinarize
PLUGIN_OPS = ("XnorConv2d", "XnorConv2dBits", "XnorConv2dBitsBinarize", "BitMaxPool", "Binarize")
NOT_TAKEN = ("shuffle_output",)  # table attributes the plugins lack (trt_build refuses shuffle_output=1)
# the plugins' own attributes and their defaults: cuda_kernel=1 runs the hand-written kernel (plugins/cuda)
OWN_ATTRS = {"XnorConv2d": {"cuda_kernel": 0}}
CONV_ATTRS = OPS["XnorConv2d"].attribute_names  # conv_attrs()'s parameters
# op -> its attributes, in the order the plugin functions declare them: the table's, then the plugin's own
PLUGIN_ATTRS = {op: tuple(a for a in OPS[op].attribute_names if a not in NOT_TAKEN) + tuple(OWN_ATTRS.get(op, ()))
                for op in PLUGIN_OPS}
PLUGIN_INPUTS = {op: len(OPS[op].inputs) for op in PLUGIN_OPS}
# op -> the defaults of its optional plugin attributes (the table's, and the plugin's own)
PLUGIN_DEFAULTS = {op: {**{k: list(v) if isinstance(v, tuple) else v for k, v in OPS[op].defaults.items()
                           if k in PLUGIN_ATTRS[op]}, **OWN_ATTRS.get(op, {})}
                   for op in PLUGIN_OPS}
_TRT_TYPES = {TensorProto.FLOAT: "FP32", TensorProto.INT32: "INT32"}
# TensorRT's AOT launch cannot opt in to more than the default dynamic shared memory
SMEM_LIMIT = _plan.SMEM_LIMIT

_lock = threading.Lock()
_registered = False
last_error: str | None = None  # the last aot_impl failure, for the build's one-line error


def plugin_id(op: str) -> str:
    return f"{PLUGIN_NAMESPACE}::{op}"


def _const(expr):
    """The value of a build-time constant shape expression (or int), else None."""
    if isinstance(expr, (int, np.integer)):
        return int(expr)
    try:
        return int(expr.constant_value()) if expr.is_constant else None
    except (RuntimeError, AttributeError, TypeError, ValueError):
        return None


def _ints(v) -> list[int]:
    return [int(a) for a in np.asarray(v).reshape(-1)]


def _int(v) -> int:
    return int(np.asarray(v).reshape(-1)[0])


def conv_attrs(kernel_shape, strides, pads, dilations, group, relu) -> _plan.ConvAttrs:
    """The plugin's attribute values (numpy arrays or ints) as validated ConvAttrs."""
    return _plan.conv_attrs(_ints(kernel_shape), _ints(strides), _ints(pads), _ints(dilations),
                            _int(group), _int(relu))


def pool_attrs(kernel_shape, strides, pads) -> _plan.ConvAttrs:
    return _plan.conv_attrs(_ints(kernel_shape), _ints(strides), _ints(pads))


def words(channels):
    """32-channel words of a bit tensor; `channels` may be an int or a shape expression."""
    return (channels + 31) // 32


def output_shape(op: str, input_shapes, attrs: dict) -> tuple:
    """The op's output shape from its input shapes (ints or shape expressions) and attributes."""
    x = input_shapes[0]
    n, c, h, w = x[0], x[1], x[2], x[3]
    if op == "Binarize":
        return (n, words(c), h, w)
    if op == "BitMaxPool":
        a = pool_attrs(attrs["kernel_shape"], attrs["strides"], attrs["pads"])
        ho, wo = _hw(h, w, a)
        return (n, c, ho, wo)
    a = conv_attrs(*(attrs[k] for k in CONV_ATTRS))
    m = input_shapes[1][0]
    ho, wo = _hw(h, w, a)
    return (n, words(m) if OPS[op].writes_bits else m, ho, wo)


def _hw(h, w, a: _plan.ConvAttrs):
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = a.kernel_shape, a.strides, a.pads, a.dilations
    return (_plan.conv_output_size(h, kh, sh, pt, pb, dh), _plan.conv_output_size(w, kw, sw, pl, pr, dw))


def output_is_bits(op: str) -> bool:
    return OPS[op].writes_bits


def io_types(op: str) -> str:
    """The op's input and output types, AutoTuneCombination style (the op table's, linear)."""
    return ", ".join(_TRT_TYPES[t.dtype] for t in (*OPS[op].inputs, OPS[op].output))


# ---------------------------------------------------------------- launch arithmetic


def static_chw(x_shape, what: str) -> tuple[int, int, int]:
    c, h, w = (_const(x_shape[i]) for i in (1, 2, 3))
    if None in (c, h, w):
        raise ValueError(f"{what}: the TensorRT plugin needs static C, H and W; only the batch may vary")
    return c, h, w


def aot_launch_cuda(x_shape, num_filters, a: _plan.ConvAttrs, capability: tuple[int, int],
                    archs) -> tuple[str, int, dict, list]:
    """The hand-written XnorConv2d kernel (plugins/cuda): kernel name, PTX arch, launch
    parameters and int arguments. The batch may be a shape expression (dynamic profile)."""
    n = x_shape[0]
    c, h, w = static_chw(x_shape, "XnorConv2d")
    m = _const(num_filters)
    if m is None:
        raise ValueError("XnorConv2d: the TensorRT plugin needs a static number of filters")
    probe = _plan.launch_plan((1, c, h, w), m, a)  # per-image part of the grid, tile, smem
    arch, kernel = _plan.select_kernel(capability, archs)
    args = list(probe.kernel_args)
    args[0] = n
    params = {"grid_x": n * probe.grid[0], "grid_y": probe.grid[1], "grid_z": 1,
              "block_x": probe.block[0], "block_y": 1, "block_z": 1, "shared_mem": probe.smem_bytes}
    return kernel, arch, params, args


def aot_launch_triton(op: str, input_shapes, attrs: dict, capability: tuple[int, int]):
    """The op's Triton kernel for `capability`: (kernel name, PTX, launch parameters, int32
    arguments). The batch may be a shape expression; everything else must be static."""
    from xnorpipe.gpu import triton_aot

    x = input_shapes[0]
    c, h, w = static_chw(x, op)
    kw = {k: (_ints(v) if k in ("kernel_shape", "strides", "pads", "dilations") else _int(v))
          for k, v in attrs.items() if k != "cuda_kernel"}
    if OPS[op].binary_conv:
        m = _const(input_shapes[1][0])
        if m is None:
            raise ValueError(f"{op}: the TensorRT plugin needs a static number of filters")
        kw["num_filters"] = m
    if "relu" in kw:
        kw["relu"] = bool(kw["relu"])
    k = triton_aot.compile_op(op, capability=capability[0] * 10 + capability[1], input_shape=(c, h, w), **kw)
    check_aot_kernel(k, op)
    grid, block, shared, scalars = triton_aot.launch(k, x[0])
    params = {"grid_x": grid[0], "grid_y": grid[1], "grid_z": grid[2],
              "block_x": block[0], "block_y": block[1], "block_z": block[2], "shared_mem": shared}
    return k.name, k.ptx, params, list(scalars)


def check_aot_kernel(k, op: str) -> None:
    """Refuse a Triton kernel TensorRT's AOT launch cannot run correctly (ValueError)."""
    if k.shared_bytes > SMEM_LIMIT:
        raise ValueError(f"{op}: the Triton kernel needs {k.shared_bytes} bytes of shared memory; TensorRT's "
                         f"AOT launch allows {SMEM_LIMIT}")
    check_trt_abi(k.ptx, k.name, PLUGIN_INPUTS[op], len(k.scalar_args), op)


def check_trt_abi(ptx, kernel: str, n_inputs: int, n_scalars: int, what: str) -> int:
    """The kernel's parameters must be what TensorRT passes: n_inputs pointers, n_scalars
    32-bit integers, one output pointer, then only pointers TensorRT leaves null (Triton's
    scratch). Returns the number of those trailing pointers; ValueError otherwise."""
    from xnorpipe.gpu.triton_aot import ptx_entry_params

    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    params = [p.split()[0].lstrip(".") for p in ptx_entry_params(text, kernel)]
    head = ["u64"] * n_inputs + ["u32"] * n_scalars + ["u64"]
    tail = params[len(head):]
    if params[:len(head)] != head or any(t != "u64" for t in tail):
        raise ValueError(f"{what}: kernel {kernel} takes ({', '.join(params)}); TensorRT's AOT launch passes "
                         f"{n_inputs} input pointers, {n_scalars} int32 arguments, then the output pointer")
    return len(tail)


# ---------------------------------------------------------------- registration


def register_plugins() -> None:
    """Register the five plugins with TensorRT (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        _define()
        _registered = True


def _aot(op: str, inputs, attrs: dict):
    """The aot_impl body shared by the plugins; a failure is kept in `last_error` (TensorRT
    reports only that the plugin failed)."""
    global last_error
    try:
        return _aot_impl(op, inputs, attrs)
    except Exception as e:
        text = str(e).strip()
        last_error = f"xnorpipe::{op} plugin: {text.splitlines()[0] if text else type(e).__name__}"
        raise


def _aot_impl(op: str, inputs, attrs: dict):
    import tensorrt.plugin as trtp

    from xnorpipe.gpu.device import device_capability

    shapes = [[d.shape_expr[i] for i in range(len(d.shape_expr))] for d in inputs]
    capability = device_capability()
    if op == "XnorConv2d" and _int(attrs["cuda_kernel"]):
        from xnorpipe import native

        a = conv_attrs(*(attrs[k] for k in CONV_ATTRS))
        kernel, arch, params, args = aot_launch_cuda(shapes[0], shapes[1][0], a, capability,
                                                     native.cuda_kernel_archs("ptx"))
        with open(native.cuda_kernel_path(arch, "ptx"), "rb") as f:
            ptx = f.read()
    else:
        kernel, ptx, params, args = aot_launch_triton(op, shapes, attrs, capability)
    launch = trtp.KernelLaunchParams()
    for key, value in params.items():
        setattr(launch, key, value)
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in args])
    return (kernel.encode() if isinstance(kernel, str) else kernel,
            ptx.encode() if isinstance(ptx, str) else ptx, launch, extra)


def _desc(op: str, inputs, attrs: dict):
    import tensorrt as trt
    import tensorrt.plugin as trtp

    shapes = [[d.shape_expr[i] for i in range(len(d.shape_expr))] for d in inputs]
    return trtp.from_shape_expr(output_shape(op, shapes, attrs),
                                dtype=trt.int32 if output_is_bits(op) else trt.float32)


def named(kernel_shape, strides, pads, dilations, group, relu, **more) -> dict:
    """A conv-family plugin's attributes by name."""
    return {"kernel_shape": kernel_shape, "strides": strides, "pads": pads, "dilations": dilations,
            "group": group, "relu": relu, **more}


def _define() -> None:
    import tensorrt.plugin as trtp

    I32 = npt.NDArray[np.int32]

    def tune(op):
        return [trtp.AutoTuneCombination(io_types(op), "LINEAR")]

    # XnorConv2d: X float, W bits, threshold, scale, bias -> Y float
    @trtp.register(plugin_id("XnorConv2d"))
    def xnor_conv2d_desc(x: trtp.TensorDesc, w: trtp.TensorDesc, threshold: trtp.TensorDesc,
                         scale: trtp.TensorDesc, bias: trtp.TensorDesc, kernel_shape: I32, strides: I32,
                         pads: I32, dilations: I32, group: int, relu: int, cuda_kernel: int) -> trtp.TensorDesc:
        return _desc("XnorConv2d", (x, w), named(kernel_shape, strides, pads, dilations, group, relu))

    @trtp.autotune(plugin_id("XnorConv2d"))
    def xnor_conv2d_tune(x, w, threshold, scale, bias, outputs):
        return tune("XnorConv2d")

    @trtp.aot_impl(plugin_id("XnorConv2d"))
    def xnor_conv2d_aot(x, w, threshold, scale, bias, kernel_shape, strides, pads, dilations, group, relu,
                        cuda_kernel, outputs, tactic):
        return _aot("XnorConv2d", (x, w, threshold, scale, bias),
                    named(kernel_shape, strides, pads, dilations, group, relu, cuda_kernel=cuda_kernel))

    # XnorConv2dBits: Xp bits, W, scale, bias -> Y float
    @trtp.register(plugin_id("XnorConv2dBits"))
    def conv_bits_desc(xp: trtp.TensorDesc, w: trtp.TensorDesc, scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                       kernel_shape: I32, strides: I32, pads: I32, dilations: I32, group: int, relu: int,
                       channels: int) -> trtp.TensorDesc:
        return _desc("XnorConv2dBits", (xp, w), named(kernel_shape, strides, pads, dilations, group, relu))

    @trtp.autotune(plugin_id("XnorConv2dBits"))
    def conv_bits_tune(xp, w, scale, bias, outputs):
        return tune("XnorConv2dBits")

    @trtp.aot_impl(plugin_id("XnorConv2dBits"))
    def conv_bits_aot(xp, w, scale, bias, kernel_shape, strides, pads, dilations, group, relu, channels,
                      outputs, tactic):
        return _aot("XnorConv2dBits", (xp, w, scale, bias),
                    named(kernel_shape, strides, pads, dilations, group, relu, channels=channels))

    # XnorConv2dBitsBinarize: Xp bits, W, scale, bias, output_threshold -> Y bits
    @trtp.register(plugin_id("XnorConv2dBitsBinarize"))
    def conv_bits_bin_desc(xp: trtp.TensorDesc, w: trtp.TensorDesc, scale: trtp.TensorDesc,
                           bias: trtp.TensorDesc, output_threshold: trtp.TensorDesc, kernel_shape: I32,
                           strides: I32, pads: I32, dilations: I32, group: int, relu: int,
                           channels: int) -> trtp.TensorDesc:
        return _desc("XnorConv2dBitsBinarize", (xp, w),
                     named(kernel_shape, strides, pads, dilations, group, relu))

    @trtp.autotune(plugin_id("XnorConv2dBitsBinarize"))
    def conv_bits_bin_tune(xp, w, scale, bias, output_threshold, outputs):
        return tune("XnorConv2dBitsBinarize")

    @trtp.aot_impl(plugin_id("XnorConv2dBitsBinarize"))
    def conv_bits_bin_aot(xp, w, scale, bias, output_threshold, kernel_shape, strides, pads, dilations, group,
                          relu, channels, outputs, tactic):
        return _aot("XnorConv2dBitsBinarize", (xp, w, scale, bias, output_threshold),
                    named(kernel_shape, strides, pads, dilations, group, relu, channels=channels))

    # BitMaxPool: Xp bits -> bits
    @trtp.register(plugin_id("BitMaxPool"))
    def bit_max_pool_desc(xp: trtp.TensorDesc, kernel_shape: I32, strides: I32, pads: I32) -> trtp.TensorDesc:
        return _desc("BitMaxPool", (xp,), {"kernel_shape": kernel_shape, "strides": strides, "pads": pads})

    @trtp.autotune(plugin_id("BitMaxPool"))
    def bit_max_pool_tune(xp, outputs):
        return tune("BitMaxPool")

    @trtp.aot_impl(plugin_id("BitMaxPool"))
    def bit_max_pool_aot(xp, kernel_shape, strides, pads, outputs, tactic):
        return _aot("BitMaxPool", (xp,), {"kernel_shape": kernel_shape, "strides": strides, "pads": pads})

    # Binarize: X float, threshold -> bits
    @trtp.register(plugin_id("Binarize"))
    def binarize_desc(x: trtp.TensorDesc, threshold: trtp.TensorDesc) -> trtp.TensorDesc:
        return _desc("Binarize", (x, threshold), {})

    @trtp.autotune(plugin_id("Binarize"))
    def binarize_tune(x, threshold, outputs):
        return tune("Binarize")

    @trtp.aot_impl(plugin_id("Binarize"))
    def binarize_aot(x, threshold, outputs, tactic):
        return _aot("Binarize", (x, threshold), {})
