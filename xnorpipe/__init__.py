"""xnorpipe: train XNOR-Nets in PyTorch and deploy them with real bitwise kernels."""

__version__ = "0.1.0"

from xnorpipe.native import ort_library_path  # noqa: E402,F401  (public API)


def __getattr__(name):  # `xnorpipe.export` / `xnorpipe.info` import torch only when used
    if name in ("export", "info"):
        from xnorpipe import api

        return getattr(api, name)
    raise AttributeError(f"module 'xnorpipe' has no attribute {name!r}")
