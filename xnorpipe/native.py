"""Locations of the native libraries built with the package (ONNX Runtime custom ops, CUDA PTX)."""

from __future__ import annotations

import os
from pathlib import Path

from xnorpipe.errors import XnorpipeError

_PKG_DIR = Path(__file__).resolve().parent
_LIB_DIR = _PKG_DIR / "lib"


def _candidates(name: str) -> list[Path]:
    # Installed wheel: xnorpipe/lib/; source tree run with PYTHONPATH=.: build/*/ (scikit-build)
    found = [_LIB_DIR / name]
    build_root = _PKG_DIR.parent / "build"
    if build_root.is_dir():
        found += sorted(build_root.glob(f"*/**/{name}"))
    return found


def ort_library_path() -> str:
    """Path of the ONNX Runtime custom-op library `libxnorpipe_ort.so`.

    Register it in any session: `so.register_custom_ops_library(xnorpipe.ort_library_path())`
    (C++: `Ort::SessionOptions::RegisterCustomOpsLibrary`). `$XNORPIPE_ORT_LIBRARY` overrides.
    """
    env = os.environ.get("XNORPIPE_ORT_LIBRARY")
    if env:
        if not Path(env).is_file():
            raise XnorpipeError(f"$XNORPIPE_ORT_LIBRARY points to a missing file: {env}")
        return env
    name = "libxnorpipe_ort.so"
    if (_LIB_DIR / name).is_file():  # regular wheel install
        return str(_LIB_DIR / name)
    # Editable install (scikit-build-core): Python files stay in the source tree and the library
    # goes to site-packages/xnorpipe/lib/; a source tree also has build/ (`make native`). The
    # newest one wins, so a rebuild takes effect without reinstalling.
    import sys

    found = [Path(entry or ".") / "xnorpipe" / "lib" / name for entry in sys.path]
    found += _candidates(name)[1:]
    built = [p for p in found if p.is_file()]
    if built:
        return str(max(built, key=lambda p: p.stat().st_mtime))
    raise XnorpipeError(
        "the xnorpipe ONNX Runtime custom-op library is not built: reinstall with "
        "`pip install .` (needs ONNX Runtime headers, see README) or set $XNORPIPE_ORT_LIBRARY"
    )


# ------------------------------------------------------------------ CUDA kernels (PTX/cubin)

CUDA_KERNEL_BASENAME = "xnor_conv2d"  # plugins/cuda: xnor_conv2d.sm_XX.ptx / .cubin


def cuda_kernel_dir() -> Path:
    """The directory holding the built CUDA kernels `xnor_conv2d.sm_XX.{ptx,cubin}`.

    `$XNORPIPE_CUDA_DIR` overrides; then the installed xnorpipe/lib/cuda/; then the newest
    build under build/ (one directory, so files of different builds never mix).
    """
    pattern = f"{CUDA_KERNEL_BASENAME}.sm_*.ptx"
    env = os.environ.get("XNORPIPE_CUDA_DIR")
    if env:
        if not any(Path(env).glob(pattern)):
            raise XnorpipeError(f"$XNORPIPE_CUDA_DIR has no {pattern}: {env}")
        return Path(env)
    if any((_LIB_DIR / "cuda").glob(pattern)):
        return _LIB_DIR / "cuda"
    build_root = _PKG_DIR.parent / "build"
    if build_root.is_dir():
        found = sorted(build_root.glob(f"*/**/{pattern}"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1].parent
    raise XnorpipeError(
        "the xnorpipe CUDA kernels are not built: reinstall with `pip install .` on a machine "
        "with nvcc (CUDA_HOME), run `cmake -S plugins -B build/dev -G Ninja && cmake --build "
        "build/dev`, or set $XNORPIPE_CUDA_DIR")


def cuda_kernel_archs(fmt: str = "ptx") -> list[int]:
    """SM targets (e.g. [75, 80, 86, 89, 90]) with a `fmt` file ("ptx" or "cubin") built."""
    archs = []
    for p in cuda_kernel_dir().glob(f"{CUDA_KERNEL_BASENAME}.sm_*.{fmt}"):
        tag = p.name[len(CUDA_KERNEL_BASENAME) + 4:-len(fmt) - 1]
        if tag.isdigit():
            archs.append(int(tag))
    return sorted(archs)


def cuda_kernel_path(arch: int, fmt: str = "ptx") -> str:
    """Path of `xnor_conv2d.sm_{arch}.{fmt}` ("ptx" or "cubin")."""
    p = cuda_kernel_dir() / f"{CUDA_KERNEL_BASENAME}.sm_{arch}.{fmt}"
    if not p.is_file():
        raise XnorpipeError(f"CUDA kernel file missing: {p}")
    return str(p)
