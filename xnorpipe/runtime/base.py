"""The interface every runtime implements."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np


class Engine:
    """Runs one deployed model: normalised float32 NCHW input -> float32 logits [N, classes].

    Sources (an engine takes the ones it needs, and raises XnorpipeError when one is missing):
      - `model`: a DeployModel (xnorpipe.deploy.ir), for the PyTorch-based engines;
      - `onnx_path`: an ONNX file from `xnorpipe export` (or a serialized engine for `trt`).
    """

    name: ClassVar[str]
    device: ClassVar[str] = "cpu"  # where inputs are consumed: "cpu" or "cuda"

    def __init__(self, *, model=None, onnx_path: str | None = None, threads: int | None = None,
                 batch_size: int = 1, **options: Any) -> None:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Facts for the bench report (provider, library path, precision, ...)."""
        return {"engine": self.name}
