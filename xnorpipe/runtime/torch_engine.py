"""`torch` engine: the deploy module (plain float ops built from the IR) in eager PyTorch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xnorpipe.errors import XnorpipeError
from xnorpipe.runtime.base import DEVICE, Engine


class TorchEngine(Engine):
    name = "torch"
    summary = "the deploy module in eager PyTorch"
    source = "deploy"
    devices = ("cpu", "cuda")
    options = (DEVICE,)

    def __init__(self, *, model=None, onnx_path: str | None = None, threads: int | None = None,
                 batch_size: int = 1, device: str = "cpu", **options: Any) -> None:
        from xnorpipe.deploy.module import DeployModule

        if model is None:
            raise XnorpipeError("the torch engine needs the model itself (--arch or a checkpoint), "
                                "not only an ONNX file")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise XnorpipeError("--device cuda: this PyTorch has no CUDA device")
        if threads:
            torch.set_num_threads(threads)
        self.threads = threads or torch.get_num_threads()
        self.device = device
        self.module = DeployModule(model).to(device).eval()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
            if self.device == "cuda":
                torch.cuda.synchronize()
            return y.cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "runtime": f"torch {torch.__version__}", "device": self.device,
                "threads": self.threads}
