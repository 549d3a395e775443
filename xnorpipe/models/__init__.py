"""Model registry, torchvision-style: builders registered by name with their input and recipe.

    @register_model("mynet", input_shape=(3, 32, 32), binary=True, epochs=200, lr=0.1)
    def mynet(*, num_classes: int = 10, width: int = 64) -> nn.Module: ...

    build_model("mynet", width=32)      # XnorpipeError (one line) for an unknown name or argument
    get_model_spec("mynet").input_shape  # (C, H, W)

A builder takes keyword arguments only (the NIN builders also take `cfg, groups` positionally,
their older call form) and returns an nn.Module with a `num_classes` attribute, built from torch.nn
and xnorpipe.nn layers. Checkpoints record the arch name and the keyword arguments given
(`model_kwargs`), which must be plain values: see `plain_model_kwargs`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

# A model_kwargs value from a checkpoint or the command line: these types only, lists this long.
PLAIN_SCALARS = (bool, int, float, str)
MAX_LIST_ITEMS = 1024
MAX_STR_CHARS = 256
# Refused before building: a hostile checkpoint's width of 10**9 must not allocate terabytes.
MAX_PARAMETERS = 2**30


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module] = field(repr=False)
    input_shape: tuple[int, int, int]  # C, H, W of the images the model takes
    binary: bool  # has binary layers (exports in the packed forms)
    # The training recipe for `xnorpipe train` (SGD momentum 0.9, wd 1e-4, batch 100, lr x0.1
    # at 50 % and 75 % of the epochs): epochs and initial lr.
    epochs: int
    lr: float
    # The builder's keyword arguments and their defaults.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # Printed by `xnorpipe info`: how its complexity counts relate to the published ones.
    note: str = ""

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W): the size training, evaluation and calibration resize images to."""
        return self.input_shape[1], self.input_shape[2]


ARCHS: dict[str, ModelSpec] = {}


def register_model(name: str, *, input_shape: tuple[int, int, int] = (3, 32, 32), binary: bool,
                   epochs: int, lr: float, note: str = "") -> Callable:
    """Decorator: register `builder` under `name` (a programming error raises ValueError)."""

    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in ARCHS:
            raise ValueError(f"model {name!r} is registered twice")
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"{name}: input_shape must be (C, H, W), got {input_shape!r}")
        if epochs < 1 or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"{name}: recipe needs epochs >= 1 and lr > 0, got {epochs}, {lr}")
        defaults = {}
        for p in inspect.signature(builder).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
                raise ValueError(f"{name}: builder parameters must be keywords with defaults, got {p}")
            defaults[p.name] = p.default
        ARCHS[name] = ModelSpec(name, builder, shape, binary, int(epochs), float(lr), defaults, note)
        return builder

    return register


def model_names() -> list[str]:
    """The registered names, sorted (click's choices)."""
    return sorted(ARCHS)


def get_model_spec(name: str) -> ModelSpec:
    from xnorpipe.errors import XnorpipeError

    spec = ARCHS.get(name) if isinstance(name, str) else None
    if spec is None:
        if isinstance(name, str) and ":" in name:  # never imported on a file's say-so: code it names could run
            raise XnorpipeError(f"arch {name!r} is a model in user code: pass --arch {name} to import it")
        raise XnorpipeError(f"unknown arch {name!r}; choose from {', '.join(ARCHS)}, or FILE.py:NAME")
    return spec


def _output_classes(probe: nn.Module, input_shape: tuple[int, int, int], name: str) -> int:
    """The class count of a model without a `num_classes` attribute: its output's width, from a
    forward pass on the meta device (shapes only)."""
    from xnorpipe.errors import XnorpipeError

    try:
        with torch.no_grad():
            out = probe.eval()(torch.zeros(2, *input_shape, device="meta"))
    except Exception as e:  # the user's forward: any error, in one line
        raise XnorpipeError(f"{name}: no num_classes attribute, and a forward pass on a {input_shape} input "
                            f"fails: {type(e).__name__}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        raise XnorpipeError(f"{name}: the model's output is not logits [N, classes] (give it a num_classes "
                            "attribute)")
    return int(out.shape[1])


def import_user_model(reference: str) -> ModelSpec:
    """A model defined outside xnorpipe: `path/to/file.py:NAME` or `package.module:NAME`, whose
    code registers NAME with `@register_model`. The code is imported (it runs: only ever for a
    reference the user gives on the command line, never for one read from a checkpoint or an ONNX
    file) and the model is registered under `reference` too, which checkpoints and exports record."""
    import dataclasses
    import hashlib
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    from xnorpipe.errors import XnorpipeError

    if reference in ARCHS:
        return ARCHS[reference]
    where, _, name = reference.rpartition(":")
    if not where or not name.isidentifier():
        raise XnorpipeError(f"--arch {reference!r}: a user model is FILE.py:NAME or package.module:NAME")
    known = set(ARCHS)
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            if not path.is_file():
                raise XnorpipeError(f"--arch {reference}: no file {where}")
            module_name = "xnorpipe_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
            if module_name not in sys.modules:
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        else:
            importlib.import_module(where)
    except XnorpipeError:
        raise
    except Exception as e:  # the user's code: any error, said in one line
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise XnorpipeError(f"--arch {reference}: importing {where} failed: {type(e).__name__}: {text}") from None
    if name not in ARCHS:
        new = sorted(set(ARCHS) - known)
        raise XnorpipeError(f"--arch {reference}: {where} registers no model {name!r} (decorate its builder "
                            f"with @xnorpipe.models.register_model({name!r}, ...)); it registers: "
                            f"{', '.join(new) or 'none'}")
    ARCHS[reference] = dataclasses.replace(ARCHS[name], name=reference)
    return ARCHS[reference]


def build_model(name: str, cfg=None, groups=None, /, **kwargs) -> nn.Module:
    """Build `name` with its builder's defaults updated by `kwargs`.

    `cfg`, `groups` positionally: the NIN archs' older `build_model(arch, cfg, groups)` form
    (None: the default). An unknown name or argument, a value the builder refuses, or a model over
    MAX_PARAMETERS parameters raises XnorpipeError with one line.
    """
    from xnorpipe.errors import XnorpipeError

    spec = get_model_spec(name)
    for key, value in (("cfg", cfg), ("groups", groups)):
        if value is not None:
            if key in kwargs:
                raise XnorpipeError(f"{name}: {key} given twice")
            kwargs[key] = list(value)
    unknown = [k for k in kwargs if k not in spec.defaults]
    if unknown:
        takes = ", ".join(spec.defaults) or "no arguments"
        raise XnorpipeError(f"{name}: unknown model argument {unknown[0]!r} (it takes {takes})")
    try:
        # Sized on the meta device first: no memory, no random numbers drawn.
        with torch.device("meta"):
            probe = spec.builder(**kwargs)
        n = sum(p.numel() for p in probe.parameters())
        if n > MAX_PARAMETERS:
            raise XnorpipeError(f"{name}: {_kwargs_text(kwargs)} gives {n:,} parameters, over the "
                                f"limit of {MAX_PARAMETERS:,}")
        model = spec.builder(**kwargs)
    except (TypeError, ValueError, OverflowError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise XnorpipeError(f"{name}: {first}") from None
    if not isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = _output_classes(probe, spec.input_shape, name)
    return model


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "the defaults"
    return text if len(text) <= 120 else text[:117] + "..."


def plain_model_kwargs(kwargs: Any, where: str) -> dict[str, Any]:
    """`kwargs` checked to be what a checkpoint may hold: a dict of identifier keys to bools,
    ints, finite floats, short strings, or lists of those (tuples become lists). Anything else
    (a tensor, a nested dict, a huge list) raises XnorpipeError naming `where`."""
    from xnorpipe.errors import XnorpipeError

    def bad(what: str):
        return XnorpipeError(f"{where}: model_kwargs {what}")

    def scalar(key: str, v: Any) -> Any:
        if not isinstance(v, PLAIN_SCALARS):
            raise bad(f"{key!r} holds a {type(v).__name__}, not a number, string or list of them")
        if isinstance(v, float) and not math.isfinite(v):
            raise bad(f"{key!r} is not finite")
        if isinstance(v, str) and len(v) > MAX_STR_CHARS:
            raise bad(f"{key!r} is a string of {len(v)} characters (at most {MAX_STR_CHARS})")
        return v

    if not isinstance(kwargs, dict):
        raise bad(f"is a {type(kwargs).__name__}, not a dict")
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier() or len(key) > MAX_STR_CHARS:
            raise bad(f"has a key that is not a name: {str(key)[:40]!r}")
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST_ITEMS:
                raise bad(f"{key!r} is a list of {len(value)} items (at most {MAX_LIST_ITEMS})")
            out[key] = [scalar(key, v) for v in value]
        else:
            out[key] = scalar(key, value)
    return out


# The builders register themselves on import; registration order is ARCHS' order.
# isort: off
from xnorpipe.models import nin  # noqa: E402,F401
from xnorpipe.models import birealnet  # noqa: E402,F401
# isort: on
