"""`torch-xnor` engine: an exported packed or packed-bits ONNX model run through PyTorch on a
CUDA GPU, its xnorpipe ops on xnorpipe's own kernels (xnorpipe.gpu.onnx_runner).

Kernel sets (`gpu_kernels`): "triton" (default, every xnorpipe op, no CuPy needed) or "cuda",
the hand-written fused XnorConv2d kernel of plugins/cuda (binarize + binary implicit GEMM +
scale/bias/relu in one launch; the packed form only), loaded from the built cubin/PTX with
CuPy and launched on PyTorch's current stream with the tensors' own device pointers. On CUDA
the engine captures one CUDA graph per input shape (`cuda_graphs`), so a call is one replay.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from xnorpipe.errors import XnorpipeError
from xnorpipe.gpu import plan as _plan
from xnorpipe.runtime.base import CUDA_GRAPHS, CUDA_KERNEL_FORM, DEVICE, GPU_KERNELS, XNOR_FORM, Engine


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise XnorpipeError("the hand-written CUDA kernel needs a CUDA GPU: this PyTorch sees none "
                            "(torch.cuda.is_available() is False)")


def _cupy():
    try:
        import cupy
    except ImportError:
        raise XnorpipeError("--gpu-kernels cuda needs CuPy to load the hand-written CUDA kernel: "
                            "pip install cupy-cuda12x (or cupy-cuda13x), or use --gpu-kernels triton") from None
    except Exception as e:  # noqa: BLE001  e.g. a CuPy built for another CUDA major version
        raise XnorpipeError(f"CuPy failed to import: {_first_line(e)}") from None
    return cupy


class CudaKernels:
    """The XnorConv2d kernel module loaded on one device.

    Loads the cubin when one was built for this GPU's SASS family, else the PTX of the
    highest target at or below its compute capability (the driver JIT-compiles it).
    """

    def __init__(self, device_index: int, *, arch: int | None = None, fmt: str | None = None):
        """`arch`/`fmt` ("ptx" or "cubin") force a build, e.g. to test the PTX JIT path."""
        from xnorpipe import native

        cupy = _cupy()
        self.cupy = cupy
        self.device_index = device_index
        self.capability = tuple(torch.cuda.get_device_capability(device_index))
        try:
            archs = native.cuda_kernel_archs("ptx")
            if arch is not None:
                archs = [a for a in archs if a == arch]
            self.arch, self.default_kernel = _plan.select_kernel(self.capability, archs)
        except ValueError as e:
            raise XnorpipeError(str(e)) from None
        if fmt is not None:
            self.format = fmt
        elif self.arch in native.cuda_kernel_archs("cubin") and _plan.cubin_fits(self.arch, self.capability):
            self.format = "cubin"
        else:
            self.format = "ptx"
        self.path = native.cuda_kernel_path(self.arch, self.format)
        try:
            with cupy.cuda.Device(device_index):
                self.module = cupy.RawModule(path=self.path)
                for name in self.kernel_names():  # load now: errors here, not mid-inference
                    self.module.get_function(name)
        except Exception as e:  # noqa: BLE001  CuPy/driver errors have no common base
            raise XnorpipeError(f"cannot load {self.path} on {torch.cuda.get_device_name(device_index)}: "
                                f"{_first_line(e)}") from None
        self._streams: dict[int, Any] = {}
        self._functions: dict[str, Any] = {}

    def kernel_names(self) -> list[str]:
        return [_plan.MMA_KERNEL, _plan.POPC_KERNEL] if self.arch >= 80 else [_plan.POPC_KERNEL]

    def kernel_name(self, kernel: str = "auto") -> str:
        """"auto", "mma" (binary tensor cores) or "popc" -> the kernel's entry name."""
        try:
            return _plan.select_kernel(self.capability, [self.arch], kernel)[1]
        except ValueError as e:
            raise XnorpipeError(str(e)) from None

    def _stream(self, ptr: int):
        s = self._streams.get(ptr)
        if s is None:
            s = self.cupy.cuda.Stream.null if ptr == 0 else self.cupy.cuda.ExternalStream(ptr)
            self._streams[ptr] = s
        return s

    def launch(self, kernel: str, p: _plan.LaunchPlan, inputs: Sequence[torch.Tensor],
               out: torch.Tensor) -> None:
        """Launch on PyTorch's current stream of the output's device."""
        fn = self._functions.get(kernel)
        if fn is None:  # cached: per-launch Python overhead matters at batch 1
            fn = self._functions[kernel] = self.module.get_function(self.kernel_name(kernel))
        args = (tuple(np.uint64(t.data_ptr()) for t in inputs)
                + tuple(np.int32(v) for v in p.kernel_args) + (np.uint64(out.data_ptr()),))
        stream = self._stream(torch.cuda.current_stream(out.device).cuda_stream)
        with self.cupy.cuda.Device(self.device_index), stream:
            fn(p.grid, p.block, args, shared_mem=p.smem_bytes)


_KERNELS: dict[int, CudaKernels] = {}
_KERNELS_LOCK = threading.Lock()


def cuda_kernels(device: torch.device | int | None = None) -> CudaKernels:
    """The loaded kernel module of `device` (default: the current CUDA device), cached."""
    _require_cuda()
    if device is None:
        index = torch.cuda.current_device()
    elif isinstance(device, int):
        index = device
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
    with _KERNELS_LOCK:
        if index not in _KERNELS:
            _KERNELS[index] = CudaKernels(index)
        return _KERNELS[index]


def _as_cuda(v, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
    return t.to(device=device, dtype=dtype).contiguous()


def _check_operands(x: torch.Tensor, w: torch.Tensor, thr: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor, group: int) -> None:
    from xnorpipe.deploy.packing import num_words

    if x.dim() != 4:
        raise XnorpipeError(f"XnorConv2d input must be NCHW, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if w.dim() != 4 or c % group or w.shape[0] % group or w.shape[3] != num_words(c // group):
        raise XnorpipeError(f"packed weights {tuple(w.shape)} do not fit {c} input channels in "
                            f"{group} group(s): expected [M, kH, kW, {num_words(max(c // max(group, 1), 1))}]")
    if thr.numel() != c or scale.numel() != w.shape[0] or bias.numel() != w.shape[0]:
        raise XnorpipeError(f"threshold/scale/bias sizes {thr.numel()}/{scale.numel()}/{bias.numel()} "
                            f"do not fit C={c}, M={w.shape[0]}")


def _plan_for(x_shape, m: int, attrs: _plan.ConvAttrs, tile=None) -> _plan.LaunchPlan:
    try:
        return _plan.launch_plan(x_shape, m, attrs, tile)
    except ValueError as e:
        raise XnorpipeError(str(e)) from None


def xnor_conv2d_cuda(x: torch.Tensor, w_packed, threshold, scale, bias,
                     strides: Sequence[int] = (1, 1), pads: Sequence[int] = (0, 0, 0, 0),
                     dilations: Sequence[int] = (1, 1), group: int = 1, relu: bool = False, *,
                     kernel: str = "auto", tile: tuple[int, int] | None = None,
                     kernels: CudaKernels | None = None) -> torch.Tensor:
    """`xnorpipe::XnorConv2d` on the GPU: x float32 [N, C, H, W] (CUDA) -> y [N, M, Ho, Wo].

    w_packed is int32 [M, kH, kW, ceil((C/group)/32)] (deploy/packing.py); pads are
    [top, left, bottom, right]. `kernel` forces "mma" (tensor cores) or "popc"; `tile`
    forces the output tile (TH, TW), TH*TW <= 64, and `kernels` a loaded module (tests).
    Runs on PyTorch's current stream.
    """
    _require_cuda()
    if not isinstance(x, torch.Tensor) or not x.is_cuda or x.dtype != torch.float32:
        raise XnorpipeError("xnor_conv2d_cuda: x must be a float32 CUDA tensor")
    dev = x.device
    x = x.contiguous()
    w = _as_cuda(w_packed, torch.int32, dev)
    thr = _as_cuda(threshold, torch.float32, dev).reshape(-1)
    sc = _as_cuda(scale, torch.float32, dev).reshape(-1)
    bi = _as_cuda(bias, torch.float32, dev).reshape(-1)
    _check_operands(x, w, thr, sc, bi, int(group))
    try:
        attrs = _plan.conv_attrs(tuple(w.shape[1:3]), strides, pads, dilations, group, relu)
    except ValueError as e:
        raise XnorpipeError(str(e)) from None
    p = _plan_for(tuple(x.shape), w.shape[0], attrs, tile)
    y = torch.empty(p.out_shape, dtype=torch.float32, device=dev)
    if y.numel():
        (kernels or cuda_kernels(dev)).launch(kernel, p, (x, w, thr, sc, bi), y)
    return y


FORMS = ("packed", "packed-bits")
MAX_GRAPHS = 8  # captured input shapes per engine; further shapes run eagerly


def resolve_device(device: str, gpu_kernels: str = "triton") -> torch.device:
    """--device for torch-xnor: CUDA, or explicitly the CPU, where the Triton kernels run in
    Triton's interpreter (slow: a test mode)."""
    if device in ("auto", "cuda"):
        if not torch.cuda.is_available():
            hint = ("; --device cpu runs the Triton kernels in Triton's interpreter (slow, a test mode)"
                    if device == "auto" and gpu_kernels == "triton" else "")
            raise XnorpipeError(f"the torch-xnor engine needs a CUDA GPU: this PyTorch ({torch.__version__}) "
                                f"sees none{hint}")
        return torch.device("cuda", torch.cuda.current_device())
    if device == "cpu":
        if gpu_kernels != "triton":
            raise XnorpipeError(f"--gpu-kernels {gpu_kernels} runs on a CUDA GPU only, not --device cpu")
        return torch.device("cpu")
    raise XnorpipeError(f"unknown device {device!r} for torch-xnor; choose auto, cuda or cpu")


class TorchXnorEngine(Engine):
    name = "torch-xnor"
    summary = "xnorpipe's Triton or CUDA kernels from PyTorch"
    forms = FORMS
    default_form = "packed-bits"
    implied_forms = {(GPU_KERNELS.param, "cuda"): CUDA_KERNEL_FORM}
    devices = ("cuda", "cpu")  # cpu: the Triton kernels in Triton's interpreter, a test mode
    options = (DEVICE, XNOR_FORM, GPU_KERNELS, CUDA_GRAPHS)

    def __init__(self, *, model=None, onnx_path: str | None = None, threads: int | None = None,
                 batch_size: int = 1, device: str = "auto", gpu_kernels: str = "triton",
                 form: str | None = None, cuda_graphs: bool = True, **options: Any) -> None:
        from xnorpipe.deploy import onnx as deploy_onnx
        from xnorpipe.gpu.onnx_runner import KERNEL_SETS, OnnxRunner, check_supported

        if gpu_kernels not in KERNEL_SETS:
            raise XnorpipeError(f"unknown --gpu-kernels {gpu_kernels!r}; choose {' or '.join(KERNEL_SETS)}")
        if form is not None and form not in self.forms:
            raise XnorpipeError(f"engine torch-xnor runs the {' or '.join(self.forms)} form, not {form!r}")
        if onnx_path is not None:
            proto = deploy_onnx.load_onnx(onnx_path, custom_op_library=True)  # runs the ops itself
            source = str(onnx_path)
        elif model is not None:
            form = form or self.form_for({GPU_KERNELS.param: gpu_kernels})
            if not deploy_onnx.has_binary_layers(model):
                raise XnorpipeError(f"engine torch-xnor needs binary layers; {model.arch} is a float arch: "
                                    "use --engine torch")
            proto = deploy_onnx.build_onnx(model, form)
            source = f"<{model.arch}.{form} in memory>"
        else:
            raise XnorpipeError("engine torch-xnor needs an ONNX file (--onnx) or a model (--arch)")
        if deploy_onnx.count_custom_nodes(proto) == 0:
            raise XnorpipeError(f"engine torch-xnor needs a packed or packed-bits model (xnorpipe::XnorConv2d "
                                f"nodes); {source} has none: use --engine torch or ort for it")
        check_supported(proto, gpu_kernels, source)  # model errors first: they need no GPU to report
        self.dev = resolve_device(device, gpu_kernels)
        self.device = self.dev.type
        if threads and self.dev.type == "cpu":
            torch.set_num_threads(threads)
        self.source = source
        self.model_form = deploy_onnx.model_form(proto)
        self.runner = OnnxRunner(proto, device=self.dev, kernels=gpu_kernels, source=source)
        self.cuda_graphs = bool(cuda_graphs) and self.dev.type == "cuda"
        self._graphs: dict[tuple[int, ...], Any] = {}
        self.graph_error: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A float32 tensor on the engine's device in, logits out (asynchronous on CUDA)."""
        x = x.to(self.dev, torch.float32)
        if not self.cuda_graphs:
            return self.runner(x)
        key = tuple(x.shape)
        captured = self._graphs.get(key)
        if captured is None and len(self._graphs) < MAX_GRAPHS:
            captured = self._graphs[key] = self._capture(x)
        if not captured:
            return self.runner(x)
        static_in, graph, static_out = captured
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    def _capture(self, x: torch.Tensor):
        """(input buffer, graph, output buffer) for x's shape, or False when capture fails."""
        static_in = x.clone()
        side = torch.cuda.Stream(self.dev)
        side.wait_stream(torch.cuda.current_stream(self.dev))
        with torch.cuda.stream(side):  # compile kernels and pick cuDNN algorithms outside capture
            for _ in range(2):
                self.runner(static_in)
        torch.cuda.current_stream(self.dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_out = self.runner(static_in)
        except (RuntimeError, XnorpipeError) as e:
            torch.cuda.synchronize(self.dev)
            self.graph_error = _first_line(e)
            warnings.warn(f"torch-xnor: CUDA graph capture failed ({self.graph_error}); running eagerly",
                          RuntimeWarning, stacklevel=3)
            return False
        return static_in, graph, static_out

    def __call__(self, x) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            xt = x.to(self.dev, torch.float32)
        else:
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dev)
        y = self.forward(xt)
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        return y.cpu().numpy()

    def describe(self) -> dict[str, Any]:
        d = {"engine": self.name, "runtime": f"torch {torch.__version__}", "model": self.source,
             "form": self.model_form, **self.runner.describe()}
        if self.dev.type == "cuda":
            cap = torch.cuda.get_device_capability(self.dev)
            d.update(device=torch.cuda.get_device_name(self.dev), compute_capability=f"{cap[0]}.{cap[1]}",
                     cuda_graphs=("off" if not self.cuda_graphs else
                                  f"failed: {self.graph_error}" if self.graph_error else "on"))
        else:
            d.update(device="cpu (Triton interpreter)")
        return d
