"""The CUDA kernels build to PTX and cubin for every target (needs nvcc; no GPU)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xnorpipe.gpu import plan

ROOT = Path(__file__).resolve().parent.parent
CUDA_SRC = ROOT / "plugins" / "cuda"


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    for d in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        if not found and d and Path(d, "bin", "nvcc").is_file():
            found = str(Path(d, "bin", "nvcc"))
    return found


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit absent): kernels not built")


@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory) -> Path:
    """plugins/cuda built alone (the other plugins need ONNX Runtime headers) and installed."""
    if NVCC is None:
        pytest.skip("nvcc not found")
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    tmp = tmp_path_factory.mktemp("cuda")
    (tmp / "src").mkdir()
    (tmp / "src" / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(t NONE)\n"
        f'add_subdirectory("{CUDA_SRC.as_posix()}" cuda)\n')
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    env = dict(os.environ, CUDA_HOME=str(Path(NVCC).parent.parent))
    subprocess.run(["cmake", "-S", tmp / "src", "-B", tmp / "build", *gen], check=True, env=env,
                   capture_output=True)
    subprocess.run(["cmake", "--build", tmp / "build", "-j", "4"], check=True, capture_output=True)
    subprocess.run(["cmake", "--install", tmp / "build", "--prefix", tmp / "prefix"], check=True,
                   capture_output=True)
    return tmp


def _entries(ptx: str) -> dict[str, list[str]]:
    """.entry name -> its .param types."""
    out = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.S):
        out[m.group(1)] = re.findall(r"\.param\s+\.(\w+)", m.group(2))
    return out


@needs_nvcc
def test_every_target_has_ptx_and_cubin(cuda_build):
    out = cuda_build / "build" / "cuda"
    for arch in plan.KERNEL_ARCHS:
        for fmt in ("ptx", "cubin"):
            assert (out / f"xnor_conv2d.sm_{arch}.{fmt}").stat().st_size > 1000, (arch, fmt)
        cubin = (out / f"xnor_conv2d.sm_{arch}.cubin").read_bytes()
        assert cubin[:4] == b"\x7fELF"
        assert plan.POPC_KERNEL.encode() in cubin
        assert (plan.MMA_KERNEL.encode() in cubin) == (arch >= 80)


@needs_nvcc
def test_ptx_entries_and_signature(cuda_build):
    from xnorpipe.gpu.trt_plugin import check_trt_abi

    n_ints = len(plan.launch_plan((1, 8, 4, 4), 8, plan.conv_attrs((3, 3))).kernel_args)
    expected = ["u64"] * 5 + ["u32"] * n_ints + ["u64"]  # TensorRT AOT order: inputs, ints, output
    for arch in plan.KERNEL_ARCHS:
        ptx = (cuda_build / "build" / "cuda" / f"xnor_conv2d.sm_{arch}.ptx").read_text()
        entries = _entries(ptx)
        want = {plan.POPC_KERNEL} | ({plan.MMA_KERNEL} if arch >= 80 else set())
        assert set(entries) == want, (arch, entries.keys())
        for name, params in entries.items():
            assert params == expected, (arch, name, params)
            # the TensorRT plugin's own check of what its AOT launch passes (--gpu-kernels cuda)
            assert check_trt_abi(ptx, name, 5, n_ints, name) == 0
        if arch >= 80:
            assert "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc" in ptx
        assert re.search(rf"\.target\s+sm_{arch}\b", ptx)


@needs_nvcc
def test_each_ptx_assembles_with_ptxas(cuda_build, tmp_path):
    ptxas = Path(NVCC).parent / "ptxas"
    for arch in plan.KERNEL_ARCHS:
        src = cuda_build / "build" / "cuda" / f"xnor_conv2d.sm_{arch}.ptx"
        r = subprocess.run([ptxas, f"-arch=sm_{arch}", "-o", tmp_path / f"{arch}.cubin", src],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


@needs_nvcc
def test_sm75_ptx_also_assembles_for_newer_targets(cuda_build, tmp_path):
    """sm_100+ GPUs load the sm_75 PTX (no b1 tensor cores there): it must compile forward."""
    ptxas = Path(NVCC).parent / "ptxas"
    src = cuda_build / "build" / "cuda" / "xnor_conv2d.sm_75.ptx"
    r = subprocess.run([ptxas, "-arch=sm_90", "-o", tmp_path / "fwd.cubin", src], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@needs_nvcc
def test_install_layout_and_native_lookup(cuda_build, monkeypatch):
    from xnorpipe import native

    lib = cuda_build / "prefix" / "xnorpipe" / "lib" / "cuda"
    for arch in plan.KERNEL_ARCHS:
        assert (lib / f"xnor_conv2d.sm_{arch}.ptx").is_file()
        assert (lib / f"xnor_conv2d.sm_{arch}.cubin").is_file()
    monkeypatch.setenv("XNORPIPE_CUDA_DIR", str(lib))
    assert native.cuda_kernel_archs("ptx") == list(plan.KERNEL_ARCHS)
    assert native.cuda_kernel_archs("cubin") == list(plan.KERNEL_ARCHS)
    assert native.cuda_kernel_path(80, "cubin").endswith("xnor_conv2d.sm_80.cubin")


def test_native_lookup_errors(tmp_path, monkeypatch):
    from xnorpipe import native
    from xnorpipe.errors import XnorpipeError

    monkeypatch.setenv("XNORPIPE_CUDA_DIR", str(tmp_path))
    with pytest.raises(XnorpipeError, match="XNORPIPE_CUDA_DIR"):
        native.cuda_kernel_dir()
    (tmp_path / "xnor_conv2d.sm_80.ptx").write_text("// ptx")
    assert native.cuda_kernel_archs("ptx") == [80]
    with pytest.raises(XnorpipeError, match="missing"):
        native.cuda_kernel_path(90, "ptx")


def test_cmake_without_nvcc_is_a_clean_no_op(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(t NONE)\n"
        f'add_subdirectory("{CUDA_SRC.as_posix()}" cuda)\n'
        f'add_subdirectory("{(ROOT / "plugins" / "trt").as_posix()}" trt)\n')
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "TENSORRT_ROOT", "TRT_ROOT")}
    env["PATH"] = "/usr/bin:/bin"  # no nvcc on it; the HINTS /usr/local/cuda/bin remains a candidate
    r = subprocess.run(["cmake", "-S", tmp_path / "src", "-B", tmp_path / "b",
                        "-DXNORPIPE_NVCC=XNORPIPE_NVCC-NOTFOUND", "-UXNORPIPE_NVCC",
                        "-DCMAKE_IGNORE_PATH=/usr/local/cuda/bin;/usr/local/cuda-13.0/bin;/usr/local/bin"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    if NVCC and Path(NVCC).parent.as_posix() in ("/usr/bin", "/bin"):
        pytest.skip("nvcc is on /usr/bin: cannot hide it")
    assert "nvcc not found" in r.stdout
    r = subprocess.run(["cmake", "--build", tmp_path / "b"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not list((tmp_path / "b").rglob("*.ptx"))
