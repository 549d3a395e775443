"""Run an exported xnorpipe ONNX graph (packed, packed-bits or portable) on torch tensors.

A small executor, not a general ONNX runtime: it runs the node types `xnorpipe export` emits,
in any graph (a tensor may feed several nodes: residual adds, concatenations), nodes in the
topological order ONNX requires.
Standard nodes map to torch ops; xnorpipe nodes map to a kernel set:
  - "triton" (default): xnorpipe.gpu.triton_kernels, every xnorpipe op;
  - "cuda": the hand-written CUDA kernel of plugins/cuda through CuPy, `XnorConv2d` only (the
    packed form).
`ConvBinarize` runs as torch conv2d (+ ReLU) then `binarize`, `AvgPoolBinarize` as avg_pool2d
(count_include_pad) then `binarize`: the float layers are torch's, as the contract allows.

Initializers become device tensors once, at construction. On CUDA, float convolutions run in
IEEE FP32 (no TF32), the precision the contract's parity figures assume. On the CPU the
Triton kernels run in Triton's interpreter (xnorpipe.gpu.triton_kernels picks it for CPU
tensors): slow, and how CI tests this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xnorpipe.deploy.onnx.ops import OPS
from xnorpipe.errors import XnorpipeError
from xnorpipe.runtime.base import GPU_KERNELS

KERNEL_SETS = GPU_KERNELS.choices  # what --gpu-kernels names
STANDARD_DOMAINS = ("", "ai.onnx")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------ kernel sets


class _TritonKernels:
    """xnorpipe's ops on the Triton kernels (xnorpipe.gpu.triton_kernels)."""

    name = "triton"
    ops: tuple[str, ...] = ("XnorConv2d", "XnorConv2dBits", "XnorConv2dBitsBinarize", "BitMaxPool",
                            "Binarize", "ConvBinarize", "AvgPoolBinarize")

    def __init__(self, device: torch.device):
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            raise XnorpipeError("the Triton kernels need Triton: pip install triton")
        try:
            from xnorpipe.gpu import triton_kernels
        except ImportError as e:
            raise XnorpipeError(f"the Triton kernels failed to import: {_first_line(e)}") from None
        self.tk = triton_kernels
        self.version = _module_version("triton")

    def xnor_conv2d(self, x, w, threshold, scale, bias, a):
        return self.tk.xnor_conv2d(x, w, threshold, scale, bias, strides=a.strides, pads=a.pads,
                                   dilations=a.dilations, group=a.group, relu=a.relu)

    def xnor_conv2d_bits(self, xp, w, scale, bias, channels, output_threshold, a, shuffle_output):
        return self.tk.xnor_conv2d_bits(xp, w, scale, bias, channels=channels,
                                        output_threshold=output_threshold, strides=a.strides,
                                        pads=a.pads, dilations=a.dilations, group=a.group, relu=a.relu,
                                        shuffle_output=shuffle_output)

    def bit_max_pool(self, xp, kernel_shape, strides, pads):
        return self.tk.bit_max_pool(xp, kernel_shape=kernel_shape, strides=strides, pads=pads)

    def binarize(self, x, threshold):
        return self.tk.binarize(x, threshold)


class _CudaKernels:
    """`XnorConv2d` on the hand-written CUDA kernel (plugins/cuda), launched through CuPy."""

    name = "cuda"
    ops: tuple[str, ...] = ("XnorConv2d",)

    def __init__(self, device: torch.device):
        from xnorpipe.runtime import torch_xnor

        if device.type != "cuda":
            raise XnorpipeError("--gpu-kernels cuda needs a CUDA device (the hand-written kernel has no "
                                "CPU or interpreter mode)")
        self.module = torch_xnor.cuda_kernels(device)  # one-line errors: no CuPy, no build, no GPU
        self.launch = torch_xnor.xnor_conv2d_cuda
        self.version = f"cupy {self.module.cupy.__version__}, {os.path.basename(self.module.path)}"

    def xnor_conv2d(self, x, w, threshold, scale, bias, a):
        return self.launch(x, w, threshold, scale, bias, a.strides, a.pads, a.dilations, a.group, a.relu,
                           kernels=self.module)


def _module_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return name


def kernel_set(name: str, device: torch.device):
    if name == "triton":
        return _TritonKernels(device)
    if name == "cuda":
        return _CudaKernels(device)
    raise XnorpipeError(f"unknown GPU kernel set {name!r}; choose {' or '.join(KERNEL_SETS)}")


# ----------------------------------------------------------------------------- attributes


@dataclass(frozen=True)
class _Conv:
    """Conv-family attributes, ONNX names and defaults (pads [top, left, bottom, right])."""

    kernel_shape: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    group: int
    relu: bool


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _ints(v, n: int, lo: int, what: str) -> tuple[int, ...]:
    try:
        t = tuple(int(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be {n} ints") from None
    if len(t) != n or any(x < lo for x in t) or any(x > 1 << 20 for x in t):
        raise ValueError(f"{what} must be {n} ints in [{lo}, 2**20], got {list(t)}")
    return t


def _conv_attrs(at: dict[str, Any], kernel_shape=None) -> _Conv:
    if at.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise ValueError(f"auto_pad={at['auto_pad']} is not supported (the exporter writes explicit pads)")
    ks = at.get("kernel_shape", kernel_shape)
    if ks is None:
        raise ValueError("kernel_shape is missing")
    group = int(at.get("group", 1))
    if not 1 <= group <= 1 << 20:
        raise ValueError(f"group must be >= 1, got {group}")
    return _Conv(kernel_shape=_ints(ks, 2, 1, "kernel_shape"),
                 strides=_ints(at.get("strides", (1, 1)), 2, 1, "strides"),
                 pads=_ints(at.get("pads", (0, 0, 0, 0)), 4, 0, "pads"),
                 dilations=_ints(at.get("dilations", (1, 1)), 2, 1, "dilations"),
                 group=group, relu=bool(int(at.get("relu", 0))))


def _pool_attrs(at: dict[str, Any]) -> _Conv:
    for key, ok in (("auto_pad", ("NOTSET", "")), ("ceil_mode", (0,)), ("storage_order", (0,))):
        if key in at and at[key] not in ok:
            raise ValueError(f"{key}={at[key]} is not supported")
    if "dilations" in at and tuple(at["dilations"]) != (1, 1):
        raise ValueError(f"dilated pooling ({list(at['dilations'])}) is not supported")
    a = _conv_attrs({k: at[k] for k in ("kernel_shape", "strides", "pads") if k in at})
    kh, kw = a.kernel_shape
    top, left, bottom, right = a.pads
    if max(top, bottom) >= kh or max(left, right) >= kw:
        raise ValueError(f"pads {list(a.pads)} must be smaller than the kernel {list(a.kernel_shape)}")
    return a


def _torch_pads(pads) -> tuple[int, int, int, int]:
    top, left, bottom, right = pads
    return (left, right, top, bottom)


def _symmetric(a: _Conv) -> tuple[int, int] | None:
    """(pad_h, pad_w) when torch's symmetric `padding=` expresses the pads, else None."""
    top, left, bottom, right = a.pads
    return (top, left) if top == bottom and left == right else None


# ------------------------------------------------------------------------- standard ops


def _float_conv(x, w, b, a: _Conv):
    sym = _symmetric(a)
    if sym is None:
        x, sym = F.pad(x, _torch_pads(a.pads)), (0, 0)
    return F.conv2d(x, w, b, a.strides, sym, a.dilations, a.group)


def _pool(x, a: _Conv, kind: str, count_include_pad: bool = True):
    sym = _symmetric(a)
    kh, kw = a.kernel_shape
    if sym is not None and sym[0] <= kh // 2 and sym[1] <= kw // 2:  # torch's own padding
        if kind == "max":
            return F.max_pool2d(x, a.kernel_shape, a.strides, sym)
        return F.avg_pool2d(x, a.kernel_shape, a.strides, sym, count_include_pad=count_include_pad)
    pads = _torch_pads(a.pads)
    if kind == "max":
        return F.max_pool2d(F.pad(x, pads, value=-float("inf")), a.kernel_shape, a.strides)
    if count_include_pad:
        return F.avg_pool2d(F.pad(x, pads), a.kernel_shape, a.strides)
    # pads torch cannot take, counting only the real pixels of each window (pads < kernel: never none)
    sums = F.avg_pool2d(F.pad(x, pads), a.kernel_shape, a.strides, divisor_override=1)
    real = F.pad(x.new_ones((1, 1, *x.shape[-2:])), pads)
    return sums / F.avg_pool2d(real, a.kernel_shape, a.strides, divisor_override=1)


_GEMM_EMITTED = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}  # what xnorpipe's exporter writes
_GEMM_DEFAULTS = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}  # ONNX's


def _gemm(at: dict[str, Any]) -> Callable[..., torch.Tensor]:
    """Gemm as xnorpipe emits it: Y = A B^T (+ C), A [M, K], B [N, K], C broadcast to [M, N]."""
    unknown = sorted(set(at) - set(_GEMM_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown attribute(s) {', '.join(unknown)}")
    given = {k: at.get(k, v) for k, v in _GEMM_DEFAULTS.items()}
    if given != _GEMM_EMITTED:
        raise ValueError("only transA=0, transB=1, alpha=beta=1 (as xnorpipe emits) are supported, got "
                         + ", ".join(f"{k}={v}" for k, v in given.items()))

    def gemm(a, b, c=None):
        if a.dim() != 2 or b.dim() != 2:
            raise ValueError(f"A and B must be 2-D, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
        y = F.linear(a, b)
        return y if c is None else y + c
    return gemm


def _scalar(t: torch.Tensor | None, what: str) -> torch.Tensor | None:
    if t is not None and t.numel() != 1:
        raise ValueError(f"{what} must be a scalar, got shape {tuple(t.shape)}")
    return None if t is None else t.reshape(())


def _clip(x, lo=None, hi=None):
    lo, hi = _scalar(lo, "min"), _scalar(hi, "max")
    return x if lo is None and hi is None else torch.clamp(x, lo, hi)


def _reshape_target(shape: Sequence[int], x_shape: Sequence[int]) -> list[int]:
    """ONNX Reshape (allowzero=0): 0 copies the input's dim, -1 is inferred by torch."""
    out = []
    for i, d in enumerate(shape):
        if d == 0:
            if i >= len(x_shape):
                raise ValueError(f"Reshape: 0 at axis {i} of a rank-{len(x_shape)} input")
            out.append(int(x_shape[i]))
        else:
            out.append(int(d))
    return out


# ------------------------------------------------------------------------------- runner


def check_supported(model, kernels: str, source: str) -> None:
    """One-line XnorpipeError for a node the runner cannot run with `kernels`, before any device
    or kernel is touched."""
    from xnorpipe.deploy.onnx import DOMAIN

    if kernels not in KERNEL_SETS:
        raise XnorpipeError(f"unknown GPU kernel set {kernels!r}; choose {' or '.join(KERNEL_SETS)}")
    for n in model.graph.node:
        label = f"node {n.name or (n.output[0] if n.output else '?')!r}"
        if n.domain == DOMAIN:
            if n.op_type not in _TritonKernels.ops:
                raise XnorpipeError(f"{source}: {label} has op xnorpipe::{n.op_type}, which the torch-xnor "
                                    "runner does not implement")
            if kernels == "cuda" and n.op_type not in _CudaKernels.ops:
                raise XnorpipeError(f"{source}: --gpu-kernels cuda runs xnorpipe::XnorConv2d only (the packed "
                                    f"form); {label} is xnorpipe::{n.op_type}: use --gpu-kernels triton, or the "
                                    "packed form (--xnor-form packed)")
        elif n.domain not in STANDARD_DOMAINS or n.op_type not in _STANDARD:
            raise XnorpipeError(f"{source}: {label} has op {(n.domain + '::') if n.domain else ''}"
                                f"{n.op_type}, which the torch-xnor runner does not implement")


@dataclass
class _Step:
    name: str
    op: str
    run: Callable[..., torch.Tensor]
    inputs: tuple[int, ...]  # value slots
    output: int


class OnnxRunner:
    """One ONNX model on one torch device: `runner(x)` maps the graph input to its output."""

    def __init__(self, model, *, device: str | torch.device = "cuda", kernels: str = "triton",
                 source: str | None = None):
        """`model`: an onnx.ModelProto or a path (read with one-line errors)."""
        import onnx
        from onnx import numpy_helper

        from xnorpipe.deploy.onnx import DOMAIN, load_onnx

        if not isinstance(model, onnx.ModelProto):
            source = source or str(model)
            model = load_onnx(model, custom_op_library=True)  # no function body needed
        self.source = source or f"<{model.graph.name or 'model'}>"
        self.device = torch.device(device)
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in inits]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise XnorpipeError(f"{self.source}: expected one input and one output, found "
                                f"{len(inputs)} and {len(graph.output)}")
        check_supported(model, kernels, self.source)
        custom = [n for n in graph.node if n.domain == DOMAIN]
        self.kernels = kernel_set(kernels, self.device) if custom else None
        self.kernel_set = kernels
        self.custom_nodes = len(custom)

        slots: dict[str, int] = {}

        def slot(name: str) -> int:
            if name not in slots:
                slots[name] = len(slots)
            return slots[name]

        self._constants: dict[int, torch.Tensor] = {}
        self._host: dict[str, np.ndarray] = {}  # constant arrays the builders read (shapes, ...)
        for name, t in inits.items():
            try:
                arr = numpy_helper.to_array(t)
            except (ValueError, TypeError, RuntimeError) as e:
                raise XnorpipeError(f"{self.source}: initializer {name!r} is unreadable: {_first_line(e)}") from None
            self._host[name] = arr
            if arr.dtype not in (np.float32, np.int32, np.int64):
                raise XnorpipeError(f"{self.source}: initializer {name!r} has type {arr.dtype}; "
                                    "expected float32, int32 or int64")
            self._constants[slot(name)] = torch.from_numpy(np.array(arr, copy=True)).to(self.device)
        self.input_name = inputs[0]
        self._input_slot = slot(self.input_name)
        self.steps: list[_Step] = []
        for n in graph.node:
            for i in n.input:
                if i and i not in slots:
                    raise XnorpipeError(f"{self.source}: node {n.name or n.output[0]!r} reads {i!r}, "
                                        "which no earlier node, input or initializer defines")
            if len(n.output) != 1 or not n.output[0]:
                raise XnorpipeError(f"{self.source}: node {n.name!r} ({n.op_type}) must have one output")
            try:
                fn = self._build(n)
            except ValueError as e:
                raise XnorpipeError(f"{self.source}: node {n.name or n.output[0]!r} ({n.op_type}): "
                                    f"{_first_line(e)}") from None
            self.steps.append(_Step(n.name or n.output[0], n.op_type, fn,
                                    tuple(slot(i) if i else -1 for i in n.input), slot(n.output[0])))
        self.output_name = graph.output[0].name
        if self.output_name not in slots:
            raise XnorpipeError(f"{self.source}: the graph output {self.output_name!r} is never computed")
        self._output_slot = slots[self.output_name]
        self._names = {v: k for k, v in slots.items()}
        self._n_slots = len(slots)
        self._fp32 = self.device.type == "cuda"

    # -------------------------------------------------------------------- building

    def _const(self, node, index: int, what: str) -> np.ndarray:
        name = node.input[index] if index < len(node.input) else ""
        if name not in self._host:
            raise ValueError(f"{what} (input {index}) must be an initializer")
        return self._host[name]

    def _weight_kernel(self, n) -> tuple[int, ...] | None:
        """A float conv's kernel from its constant weight (must agree with kernel_shape)."""
        w = self._host.get(n.input[1])
        if w is None:
            return None
        if w.ndim != 4:
            raise ValueError(f"the weight must be 4-D [M, C/group, kH, kW], got shape {list(w.shape)}")
        ks = tuple(w.shape[2:])
        given = _attrs(n).get("kernel_shape")
        if given is not None and tuple(int(v) for v in given) != ks:
            raise ValueError(f"kernel_shape {list(given)} does not match the weight's {list(ks)}")
        return ks

    def _build(self, n) -> Callable[..., torch.Tensor]:
        at = _attrs(n)
        op = n.op_type
        from xnorpipe.deploy.onnx import DOMAIN

        lo, hi = _ARITY[op]
        given = len(n.input)
        if not lo <= given <= (hi or given) or any(not i for i in n.input[:lo]):
            wanted = lo if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
            raise ValueError(f"takes {wanted} inputs, got {given}")

        if n.domain == DOMAIN:
            return self._build_custom(n, at)
        if op == "Conv":
            a = _conv_attrs(at, kernel_shape=self._weight_kernel(n))
            return lambda x, w, b=None: _float_conv(x, w, b, a)
        if op == "Relu":
            return F.relu
        if op in ("MaxPool", "AveragePool"):
            a = _pool_attrs(at)
            if op == "MaxPool":
                return lambda x: _pool(x, a, "max")
            include = bool(int(at.get("count_include_pad", 0)))
            return lambda x: _pool(x, a, "avg", include)
        if op == "Flatten":
            axis = int(at.get("axis", 1))
            if axis < 0:
                raise ValueError("negative Flatten axis is not supported")
            return lambda x: x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        if op == "Reshape":
            if int(at.get("allowzero", 0)):
                raise ValueError("allowzero=1 is not supported")
            shape = [int(v) for v in self._const(n, 1, "the target shape").reshape(-1)]
            return lambda x, _shape: x.reshape(_reshape_target(shape, x.shape))
        if op == "Transpose":
            perm = [int(p) for p in at.get("perm", ())]
            if sorted(perm) != list(range(len(perm))):
                raise ValueError(f"perm {perm} is not a permutation")
            return lambda x: x.permute(*perm).contiguous()
        if op == "GreaterOrEqual":
            return torch.ge
        if op == "Where":
            return torch.where
        if op == "Mul":
            return torch.mul
        if op == "Add":
            return torch.add
        if op == "Gemm":
            return _gemm(at)
        if op == "Concat":
            if "axis" not in at:
                raise ValueError("attribute axis is missing")
            axis = int(at["axis"])
            return lambda *xs: torch.cat(xs, dim=axis)
        if op == "PRelu":  # the slope broadcasts onto x ([C, 1, 1] per channel, or one value)
            return lambda x, slope: torch.where(x < 0, x * slope, x)
        if op == "Clip":
            if "min" in at or "max" in at:
                raise ValueError("min/max attributes (Clip before opset 11) are not supported: they are inputs "
                                 "from opset 11")
            return _clip
        if op == "GlobalAveragePool":
            return lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        raise ValueError(f"unsupported op {op}")  # _STANDARD and this list are kept in step

    def _build_custom(self, n, at: dict[str, Any]) -> Callable[..., torch.Tensor]:
        k = self.kernels
        op = n.op_type
        if op == "XnorConv2d":
            if "shuffle_output" in at:  # ignoring it would give the unshuffled channels
                raise ValueError("shuffle_output is an attribute of the bit ops (XnorConv2dBits*), not of "
                                 "XnorConv2d v1")
            a = _conv_attrs(at)
            return lambda x, w, thr, scale, bias: k.xnor_conv2d(x, w, thr, scale, bias, a)
        if op in ("XnorConv2dBits", "XnorConv2dBitsBinarize"):
            a = _conv_attrs(at)
            if "channels" not in at:
                raise ValueError("attribute channels is missing")
            channels = int(at["channels"])
            if not 1 <= channels <= 1 << 24:
                raise ValueError(f"channels must be in [1, 2**24], got {channels}")
            shuffle = at.get("shuffle_output", 0)
            if shuffle not in (0, 1):
                raise ValueError(f"shuffle_output must be 0 or 1, got {shuffle!r}")
            if op == "XnorConv2dBits":
                return lambda xp, w, scale, bias: k.xnor_conv2d_bits(xp, w, scale, bias, channels, None, a, shuffle)
            return lambda xp, w, scale, bias, thr: k.xnor_conv2d_bits(xp, w, scale, bias, channels, thr, a, shuffle)
        if op == "BitMaxPool":
            a = _pool_attrs(at)
            return lambda xp: k.bit_max_pool(xp, a.kernel_shape, a.strides, a.pads)
        if op == "Binarize":
            return lambda x, thr: k.binarize(x, thr)
        if op == "ConvBinarize":
            a = _conv_attrs(at, kernel_shape=self._weight_kernel(n))

            def conv_binarize(x, w, b, thr):
                y = _float_conv(x, w, b, a)
                return k.binarize(F.relu(y) if a.relu else y, thr)
            return conv_binarize
        if op == "AvgPoolBinarize":
            a = _pool_attrs(at)
            return lambda x, thr: k.binarize(_pool(x, a, "avg", True), thr)
        raise ValueError(f"unsupported op xnorpipe::{op}")

    # -------------------------------------------------------------------- running

    def _execute(self, x: torch.Tensor, keep: bool):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device != self.device:
            raise XnorpipeError(f"the runner takes float32 tensors on {self.device}, got "
                                f"{getattr(x, 'dtype', type(x).__name__)} on {getattr(x, 'device', '?')}")
        values: list[Any] = [None] * self._n_slots
        for i, t in self._constants.items():
            values[i] = t
        values[self._input_slot] = x
        step = None
        try:
            with _ieee_fp32_convs(self._fp32):
                for step in self.steps:
                    values[step.output] = step.run(*[values[i] if i >= 0 else None for i in step.inputs])
        except (XnorpipeError, RuntimeError, ValueError, TypeError, IndexError) as e:
            where = f"node {step.name!r} ({step.op})" if step is not None else "input"
            text = e.message if isinstance(e, XnorpipeError) else _first_line(e)
            raise XnorpipeError(f"{self.source}: {where} failed on input {tuple(x.shape)}: {text}") from None
        if keep:
            return {self._names[i]: v for i, v in enumerate(values) if v is not None and i not in self._constants}
        return values[self._output_slot]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Graph input -> graph output, asynchronous on the current stream (CUDA)."""
        with torch.inference_mode():
            return self._execute(x, keep=False)

    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every computed value by tensor name (the input included): for tests and debugging."""
        with torch.inference_mode():
            return self._execute(x, keep=True)

    def describe(self) -> dict[str, Any]:
        d = {"gpu_kernels": self.kernel_set, "xnor_nodes": self.custom_nodes, "nodes": len(self.steps)}
        if self.kernels is not None:
            d["kernels_runtime"] = self.kernels.version
        return d


# op -> (fewest, most) inputs (most None: any number), for the standard ops the exporter emits and
# xnorpipe's ops (the op table's); the standard ones are _STANDARD
_ARITY = {"Conv": (2, 3), "Relu": (1, 1), "MaxPool": (1, 1), "AveragePool": (1, 1), "Flatten": (1, 1),
          "Reshape": (2, 2), "Transpose": (1, 1), "GreaterOrEqual": (2, 2), "Where": (3, 3), "Mul": (2, 2),
          "Add": (2, 2), "Gemm": (2, 3), "Concat": (1, None), "PRelu": (2, 2), "Clip": (1, 3),
          "GlobalAveragePool": (1, 1),
          **{op.name: (len(op.inputs), len(op.inputs)) for op in OPS.values()}}
_STANDARD = ("Conv", "Relu", "MaxPool", "AveragePool", "Flatten", "Reshape", "Transpose", "GreaterOrEqual",
             "Where", "Mul", "Add", "Gemm", "Concat", "PRelu", "Clip", "GlobalAveragePool")


@contextlib.contextmanager
def conv_precision(mode: str):
    """cuDNN float convolutions in IEEE FP32 (`mode="ieee"`) or TF32 (`"tf32"`) within the block
    (PyTorch's default for cuDNN is TF32); the previous setting is restored after. Uses the
    `fp32_precision` API where this PyTorch has it, else the older `allow_tf32` flag."""
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        old = conv.fp32_precision
        conv.fp32_precision = mode
        try:
            yield
        finally:
            conv.fp32_precision = old
    else:
        old = cudnn.allow_tf32
        cudnn.allow_tf32 = mode == "tf32"
        try:
            yield
        finally:
            cudnn.allow_tf32 = old


def _ieee_fp32_convs(enabled: bool):
    return conv_precision("ieee") if enabled else contextlib.nullcontext()
