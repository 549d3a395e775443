"""`trt` engine: TensorRT on a CUDA GPU.

`onnx_path` is an ONNX export (built in memory: portable with stock layers, packed and
packed-bits with xnorpipe's AOT plugins, xnorpipe.gpu.trt_plugin; `gpu_kernels="cuda"` puts the
hand-written XnorConv2d kernel in them, packed form only) or a serialized engine from
`xnorpipe build-engine` (.engine / .plan). Device memory and the stream are PyTorch's.
TensorRT is imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xnorpipe.errors import XnorpipeError
from xnorpipe.runtime.base import CUDA_KERNEL_FORM, GPU_KERNELS, XNOR_FORM, Engine

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class TrtEngine(Engine):
    name = "trt"
    summary = "TensorRT with xnorpipe's plugins"
    forms = ("packed", "packed-bits", "portable")  # portable: a float arch's only form
    default_form = "packed"
    implied_forms = {(GPU_KERNELS.param, "cuda"): CUDA_KERNEL_FORM}
    devices = ("cuda",)
    options = (XNOR_FORM, GPU_KERNELS)

    def __init__(self, *, model=None, onnx_path: str | None = None, threads: int | None = None,
                 batch_size: int = 1, fp16: bool = False, max_batch: int | None = None,
                 workspace_mb: int | None = None, timing_cache: str | None = None,
                 gpu_kernels: str = "triton", form: str | None = None, **options: Any) -> None:
        """`form`: the form bench exported `onnx_path` in (checked; the file is what runs)."""
        from xnorpipe.deploy.onnx import load_onnx
        from xnorpipe.gpu.trt_build import build_serialized_engine, check_plugin_ops, import_tensorrt, require_gpu

        if form is not None and form not in self.forms:
            raise XnorpipeError(f"engine trt runs the {', '.join(self.forms)} forms, not {form!r}")
        if onnx_path is None:
            raise XnorpipeError("the trt engine needs --onnx: an ONNX export or a serialized "
                                "TensorRT engine (.engine/.plan from `xnorpipe build-engine`)")
        path = Path(onnx_path)
        if not path.is_file():
            raise XnorpipeError(f"file not found: {path}")
        if path.suffix.lower() == ".onnx":
            check_plugin_ops(load_onnx(path, custom_op_library=True), path, gpu_kernels)  # before TensorRT
        trt = import_tensorrt()
        require_gpu("the trt engine")
        import torch

        if not torch.cuda.is_available():
            raise XnorpipeError("the trt engine keeps its buffers in PyTorch CUDA memory, but this "
                                "PyTorch has no CUDA")
        self.torch = torch
        self.dev = torch.device("cuda", torch.cuda.current_device())
        self.path = path
        self.built = None
        if path.suffix.lower() == ".onnx":
            self.built = build_serialized_engine(path, fp16=fp16, workspace_mb=workspace_mb,
                                                 timing_cache=timing_cache, opt_batch=batch_size,
                                                 max_batch=max(max_batch or 256, batch_size),
                                                 gpu_kernels=gpu_kernels)
            data = self.built.engine
        elif path.suffix.lower() in ENGINE_SUFFIXES:
            data = path.read_bytes()
        else:
            raise XnorpipeError(f"{path}: expected .onnx or a serialized engine ({', '.join(ENGINE_SUFFIXES)})")
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise XnorpipeError(f"{path}: TensorRT {trt.__version__} cannot deserialize this engine "
                                "(built by another TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise XnorpipeError(f"{path}: expected one input and one output, found {inputs} -> {outputs}")
        self.input, self.output = inputs[0], outputs[0]
        for n in names:
            if self.engine.get_tensor_dtype(n) != trt.DataType.FLOAT:
                raise XnorpipeError(f"{path}: tensor {n} is {self.engine.get_tensor_dtype(n)}, expected FLOAT")
        shape = tuple(self.engine.get_tensor_shape(self.input))
        if shape[0] < 0:
            self.max_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[2][0])
        else:
            self.max_batch = int(shape[0])
        self.static_batch = shape[0] >= 0
        self.input_shape = shape

    def forward(self, x):
        """CUDA float32 tensor in, CUDA tensor out, on PyTorch's current stream."""
        torch = self.torch
        x = x.to(self.dev, torch.float32).contiguous()
        outs = []
        stream = torch.cuda.current_stream(self.dev).cuda_stream
        for start in range(0, x.shape[0], self.max_batch):
            chunk = x[start:start + self.max_batch]
            if self.static_batch and chunk.shape[0] != self.max_batch:  # pad the tail
                pad = chunk.new_zeros((self.max_batch - chunk.shape[0], *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad])
            elif not self.static_batch:
                self.context.set_input_shape(self.input, tuple(chunk.shape))
            y = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=torch.float32,
                            device=self.dev)
            self.context.set_tensor_address(self.input, chunk.data_ptr())
            self.context.set_tensor_address(self.output, y.data_ptr())
            if not self.context.execute_async_v3(stream):
                raise XnorpipeError("TensorRT execution failed (see its log above)")
            outs.append(y[:min(self.max_batch, x.shape[0] - start)])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def __call__(self, x) -> np.ndarray:
        torch = self.torch
        xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        y = self.forward(xt)
        torch.cuda.synchronize(self.dev)
        return y.cpu().numpy()

    def describe(self) -> dict[str, Any]:
        d = {"engine": self.name, "runtime": f"TensorRT {self.trt.__version__}",
             "device": self.torch.cuda.get_device_name(self.dev), "source": str(self.path),
             "max_batch": self.max_batch}
        if self.built is not None:
            d.update(plugin_layers=self.built.plugin_layers, fp16=self.built.fp16,
                     build_seconds=round(self.built.seconds, 1), form=self.built.form,
                     gpu_kernels=self.built.gpu_kernels)
        return d
