"""xnorpipe: train XNOR-Nets in PyTorch and deploy them with real bitwise kernels."""

__version__ = "0.1.0"

from xnorpipe.native import ort_library_path  # noqa: E402,F401  (public API)
