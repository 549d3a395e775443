"""`torch-xnor` engine: the deploy IR on a CUDA GPU, binary layers on xnorpipe's own kernels.

Float layers (conv, pools, shuffle, flatten) run as the PyTorch deploy module does; every
BinaryConv runs the fused CUDA kernel of plugins/cuda (binarize + binary implicit GEMM +
scale/bias/relu in one launch), loaded from the built cubin/PTX with CuPy and launched on
PyTorch's current stream with the tensors' own device pointers (no copies).
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np
import torch

from xnorpipe.errors import XnorpipeError
from xnorpipe.gpu import plan as _plan
from xnorpipe.runtime.base import Engine


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise XnorpipeError("the torch-xnor engine needs a CUDA GPU: this PyTorch sees none "
                            "(torch.cuda.is_available() is False)")


def _cupy():
    try:
        import cupy
    except ImportError:
        raise XnorpipeError("the torch-xnor engine needs CuPy to load its CUDA kernels: "
                            "pip install cupy-cuda12x (or cupy-cuda13x)") from None
    except Exception as e:  # e.g. a CuPy built for another CUDA major version
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
        except Exception as e:
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


class CudaBinaryConv(torch.nn.Module):
    """One BinaryConv of the IR on the CUDA kernel (operands converted once)."""

    def __init__(self, layer, kernel: str = "auto"):
        super().__init__()
        self.register_buffer("weight_bits", torch.from_numpy(np.ascontiguousarray(layer.weight_bits, np.int32)))
        for name in ("threshold", "scale", "bias"):
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(getattr(layer, name), np.float32).reshape(-1)))
        if tuple(layer.weight_bits.shape[1:3]) != tuple(layer.kernel_shape):
            raise XnorpipeError(f"BinaryConv weights {layer.weight_bits.shape} do not match kernel {layer.kernel_shape}")
        try:
            self.attrs = _plan.conv_attrs(layer.kernel_shape, layer.strides, layer.pads,
                                          layer.dilations, layer.group, layer.relu)
        except ValueError as e:
            raise XnorpipeError(str(e)) from None
        self.kernel = kernel
        self._plans: dict[tuple[int, ...], _plan.LaunchPlan] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        key = tuple(x.shape)
        p = self._plans.get(key)
        if p is None:
            _check_operands(x, self.weight_bits, self.threshold, self.scale, self.bias, self.attrs.group)
            p = self._plans[key] = _plan_for(key, self.weight_bits.shape[0], self.attrs)
        y = torch.empty(p.out_shape, dtype=torch.float32, device=x.device)
        if y.numel():
            cuda_kernels(x.device).launch(self.kernel, p, (x, self.weight_bits, self.threshold,
                                                           self.scale, self.bias), y)
        return y


class TorchXnorEngine(Engine):
    name = "torch-xnor"
    device = "cuda"

    def __init__(self, *, model=None, onnx_path: str | None = None, threads: int | None = None,
                 batch_size: int = 1, kernel: str = "auto", **options: Any) -> None:
        if model is None:
            raise XnorpipeError("the torch-xnor engine needs the model itself (--arch or a checkpoint), "
                                "not only an ONNX file")
        _require_cuda()
        from xnorpipe.deploy import ir
        from xnorpipe.deploy.module import DeployModule

        self.dev = torch.device("cuda", torch.cuda.current_device())
        self.kernels = cuda_kernels(self.dev)
        self.kernel_name = self.kernels.kernel_name(kernel)
        module = DeployModule(model)
        # Same float layers as the deploy module; binary ones swapped for the CUDA kernel.
        for i, layer in enumerate(model.layers):
            if isinstance(layer, ir.BinaryConv):
                module.layers[i] = CudaBinaryConv(layer, kernel)
        self.module = module.to(self.dev).eval()
        self.binary_layers = sum(isinstance(layer, ir.BinaryConv) for layer in model.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CUDA tensor in, CUDA tensor out, asynchronous on the current stream."""
        with torch.inference_mode():
            return self.module(x)

    def __call__(self, x) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            xt = x.to(self.dev, torch.float32)
        else:
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dev)
        y = self.forward(xt)
        torch.cuda.synchronize(self.dev)
        return y.cpu().numpy()

    def describe(self) -> dict[str, Any]:
        cap = self.kernels.capability
        return {"engine": self.name, "device": torch.cuda.get_device_name(self.dev),
                "compute_capability": f"{cap[0]}.{cap[1]}", "kernel": self.kernel_name,
                "kernel_file": self.kernels.path, "binary_layers": self.binary_layers,
                "runtime": f"torch {torch.__version__} + cupy {self.kernels.cupy.__version__}"}
