"""CUDA device queries through the driver library (ctypes): no torch, CuPy or TensorRT.

Used to give one-line errors before heavy imports, and by the TensorRT plugin to pick the
PTX of the build GPU.
"""

from __future__ import annotations

import ctypes
import functools

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


_CUDA_ERROR_NO_DEVICE = 100


@functools.lru_cache(maxsize=1)
def _load() -> tuple[object | None, int]:
    """(libcuda, cuInit's result), or (None, -1) without a driver."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        return lib, int(lib.cuInit(0))
    return None, -1


def _driver():
    lib, rc = _load()
    return lib if rc == 0 else None


def gpu_problem() -> str | None:
    """None when a CUDA GPU is usable, else why not (one short phrase)."""
    lib, rc = _load()
    if lib is None:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    if rc == _CUDA_ERROR_NO_DEVICE:
        return "no CUDA GPU is visible"
    if rc != 0:
        return f"the CUDA driver failed to initialise (CUresult {rc})"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no CUDA GPU is visible"
    return None


def device_capability(ordinal: int | None = None) -> tuple[int, int]:
    """(major, minor) of `ordinal`, or of the current context's device (else device 0)."""
    lib = _driver()
    if lib is None:
        raise RuntimeError("no NVIDIA driver")
    dev = ctypes.c_int(0)
    if ordinal is not None:
        if lib.cuDeviceGet(ctypes.byref(dev), int(ordinal)) != 0:
            raise RuntimeError(f"no CUDA device {ordinal}")
    elif lib.cuCtxGetDevice(ctypes.byref(dev)) != 0:
        dev = ctypes.c_int(0)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    if (lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev) != 0
            or lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev) != 0):
        raise RuntimeError("cuDeviceGetAttribute failed")
    return major.value, minor.value
