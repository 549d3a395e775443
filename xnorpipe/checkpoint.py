"""Checkpoints: `cifar10_<arch>_checkpoint.pth.tar` (+ `_best`), written atomically.

A checkpoint is a dict: format, arch, model_kwargs (the builder's keyword arguments, plain values),
epoch, best_acc1, model (state dict), optimizer, scheduler (state dicts, may be absent), classes
(the dataset's class names, in label order; absent in checkpoints written before it was recorded),
and any extra fields the trainer adds. Checkpoints written before model_kwargs existed hold NIN's
`cfg` and `groups` instead: they load as model_kwargs {"cfg": ..., "groups": ...}.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xnorpipe.errors import XnorpipeError
from xnorpipe.utils import arch_file_stem, atomic_path, os_error_reason

FORMAT = "xnorpipe-checkpoint/1"
DEFAULT_DIR = "checkpoints"


def checkpoint_path(arch: str, out_dir: str | os.PathLike = DEFAULT_DIR, best: bool = False) -> Path:
    return Path(out_dir) / f"cifar10_{arch_file_stem(arch)}_{'best' if best else 'checkpoint'}.pth.tar"


def default_checkpoint(arch: str) -> Path:
    """The best checkpoint `xnorpipe train --arch ARCH` writes by default."""
    return checkpoint_path(arch, DEFAULT_DIR, best=True)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    state = {"format": FORMAT, **state}
    # Serialised in memory, then written by Python: a full disk raises OSError(ENOSPC), which
    # atomic_path words as such. torch.save(state, path), or into a file object (a short write),
    # reports it as "inline_container.cc: unexpected pos".
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


@dataclass
class Checkpoint:
    path: Path
    arch: str
    model_kwargs: dict[str, Any]
    epoch: int
    best_acc1: float
    state: dict[str, Any] = field(repr=False)
    classes: tuple[str, ...] | None = None  # None: an older checkpoint that did not record them

    def build_model(self) -> torch.nn.Module:
        """The model of this checkpoint with its weights loaded (eval mode)."""
        from xnorpipe.models import build_model

        try:
            model = build_model(self.arch, **self.model_kwargs)
        except XnorpipeError as e:
            raise XnorpipeError(f"{self.path}: {e.message}") from None
        try:
            model.load_state_dict(self.state["model"])
        except (RuntimeError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise XnorpipeError(f"{self.path}: weights do not fit {self.arch}: {first}") from None
        return model.eval()


def load_checkpoint(path: str | os.PathLike, arch: str | None = None) -> Checkpoint:
    """Read and validate a checkpoint; `arch`, when given, must match the stored one."""
    path = Path(path)
    if not path.is_file():
        raise XnorpipeError(f"checkpoint not found: {path}" if not path.is_dir()
                            else f"checkpoint {path} is a directory")
    try:
        with open(path, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except OSError as e:
        raise XnorpipeError(f"{path}: cannot read checkpoint: {os_error_reason(e)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise XnorpipeError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                            f"{type(e).__name__}") from None
    except Exception as e:  # pickle errors of foreign files
        raise XnorpipeError(f"{path}: not an xnorpipe checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise XnorpipeError(f"{path}: not an xnorpipe checkpoint (no '{FORMAT}' format tag)")
    if arch is not None and state.get("arch") != arch:
        raise XnorpipeError(f"{path}: checkpoint is for arch {state.get('arch')!r}, not {arch!r}")
    classes = state.get("classes")
    if classes is not None and (not isinstance(classes, (list, tuple))
                                or not all(isinstance(c, str) for c in classes)):
        raise XnorpipeError(f"{path}: checkpoint field 'classes' is not a list of names")
    if not isinstance(state.get("arch"), str):
        raise XnorpipeError(f"{path}: checkpoint field 'arch' is not a name")
    try:
        epoch, best_acc1 = int(state.get("epoch", 0)), float(state.get("best_acc1", 0.0))
    except (TypeError, ValueError, OverflowError):
        raise XnorpipeError(f"{path}: checkpoint fields 'epoch'/'best_acc1' are not numbers") from None
    return Checkpoint(path=path, arch=state["arch"], model_kwargs=stored_model_kwargs(state, path),
                      epoch=epoch, best_acc1=best_acc1, state=state,
                      classes=tuple(classes) if classes is not None else None)


def stored_model_kwargs(state: dict[str, Any], where) -> dict[str, Any]:
    """A checkpoint's (or a stored recipe's) model_kwargs, checked to be plain values; from the
    `cfg`/`groups` fields of one written before model_kwargs existed (NIN only had those)."""
    from xnorpipe.models import plain_model_kwargs

    if "model_kwargs" in state:
        return plain_model_kwargs(state["model_kwargs"], f"{where}: checkpoint")
    legacy = {k: state[k] for k in ("cfg", "groups") if state.get(k) is not None}
    return plain_model_kwargs(legacy, f"{where}: checkpoint")
