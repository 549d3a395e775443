"""The Python entry points for a model of one's own, registered or not:
`xnorpipe.export(model, example_input, out=DIR)` and `xnorpipe.info(model, example_input)`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from xnorpipe.errors import XnorpipeError


def _input_shape(example_input) -> tuple[int, int, int]:
    shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if len(shape) == 4:
        shape = shape[1:]  # a batch: the per-sample shape
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise XnorpipeError(f"example_input must be an image batch [N, C, H, W] (or its shape), got {shape}")
    return shape


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export(model: nn.Module, example_input, out: str | os.PathLike = "exports", form: str = "all", *,
           name: str | None = None, classes: Sequence[str] | None = None, opset: int | None = None,
           allow_nonfinite: bool = False) -> list[Path]:
    """Fold `model` (eval-mode semantics) and write its ONNX forms to `out`, as `xnorpipe export`
    does for a registered arch; returns the written paths. `example_input`: a batch [N, C, H, W]
    or its shape (only the shape is used: the fold traces the model, deploy/fold.py). `name`
    names the files (`<name>.<form>.onnx`; default: the model's class name in lower case)."""
    from xnorpipe.deploy.fold import fold_model
    from xnorpipe.deploy.forms import DEFAULT_OPSET
    from xnorpipe.deploy.onnx import export as export_onnx
    from xnorpipe.deploy.onnx import resolve_forms

    if not isinstance(model, nn.Module):
        raise XnorpipeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    name = name or type(model).__name__.lower()
    metadata = {"xnorpipe.checkpoint_sha256": "none", "xnorpipe.weights_sha256": weights_sha256(model)}
    deploy = fold_model(model, arch=name, input_shape=_input_shape(example_input), classes=classes,
                        metadata=metadata, allow_nonfinite=allow_nonfinite)
    forms, _ = resolve_forms(deploy, form)
    files = export_onnx(deploy, forms, out, opset=opset or DEFAULT_OPSET)
    return [f.path for f in files]


def info(model: nn.Module, example_input, *, name: str | None = None) -> dict:
    """Parameters, binary and float operations and deployed size of `model` on one image of
    `example_input`'s shape (what `xnorpipe info` prints for a registered arch)."""
    from xnorpipe.complexity import count

    return count(model, name or type(model).__name__.lower(), _input_shape(example_input)).as_dict()
