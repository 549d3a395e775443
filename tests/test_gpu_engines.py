"""The GPU engines (`torch-xnor`, `trt`): one-line errors without CUDA/CuPy/TensorRT, lazy
imports, torch-xnor through `xnorpipe bench` on the CPU (Triton's interpreter), and, where a
CUDA GPU exists, both kernel sets against the reference and CUDA graphs against eager runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xnorpipe.errors import XnorpipeError

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
HAS_CUPY = importlib.util.find_spec("cupy") is not None


def _tiny_ir():
    from xnorpipe.deploy import ir
    from xnorpipe.deploy.packing import pack_weights

    rng = np.random.default_rng(0)
    first = ir.FloatConv(weight=rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
                         bias=np.zeros(8, np.float32), pads=(1, 1, 1, 1), relu=True)
    binary = ir.BinaryConv(weight_bits=pack_weights(rng.random((10, 8, 3, 3)) < 0.5),
                           threshold=np.zeros(8, np.float32), scale=np.ones(10, np.float32),
                           bias=np.zeros(10, np.float32), kernel_shape=(3, 3), pads=(1, 1, 1, 1), relu=True)
    return ir.DeployModel.from_layers(arch="tiny", layers=[first, binary, ir.AvgPool((8, 8), (8, 8)), ir.Flatten()],
                          input_shape=(3, 8, 8))


def test_registry_names():
    from xnorpipe.runtime import engine_class

    assert engine_class("torch-xnor").name == "torch-xnor"
    assert engine_class("torch-xnor").devices[0] == "cuda"
    assert engine_class("trt").name == "trt" and engine_class("trt").devices == ("cuda",)


def test_torch_xnor_needs_a_packed_model(tmp_path):
    import onnx

    from xnorpipe.deploy.onnx import build_onnx
    from xnorpipe.runtime import engine_class

    cls = engine_class("torch-xnor")
    with pytest.raises(XnorpipeError, match="--onnx.*--arch"):
        cls(model=None, onnx_path=None)
    with pytest.raises(XnorpipeError, match="not found"):
        cls(onnx_path=str(tmp_path / "x.onnx"))
    portable = tmp_path / "tiny.portable.onnx"
    onnx.save(build_onnx(_tiny_ir(), "portable"), portable)
    with pytest.raises(XnorpipeError, match="has none: use --engine torch"):
        cls(onnx_path=str(portable), device="cpu")
    with pytest.raises(XnorpipeError, match="runs the packed or packed-bits form"):
        cls(model=_tiny_ir(), form="portable", device="cpu")


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present")
def test_torch_xnor_without_cuda_is_one_line():
    from xnorpipe.runtime import engine_class

    with pytest.raises(XnorpipeError, match="CUDA GPU") as e:
        engine_class("torch-xnor")(model=_tiny_ir())
    assert "\n" not in e.value.message


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present")
def test_xnor_conv2d_cuda_without_cuda():
    from xnorpipe.runtime.torch_xnor import xnor_conv2d_cuda

    with pytest.raises(XnorpipeError, match="CUDA"):
        xnor_conv2d_cuda(torch.zeros(1, 8, 4, 4), np.zeros((4, 1, 1, 1), np.int32), torch.zeros(8),
                         torch.ones(4), torch.zeros(4))


def test_cupy_missing_is_one_line(monkeypatch):
    import builtins

    from xnorpipe.runtime import torch_xnor

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(XnorpipeError, match="CuPy"):
        torch_xnor._cupy()


def test_no_heavy_imports_at_module_import():
    """Importing the GPU modules must not import tensorrt or cupy (they are optional)."""
    code = ("import sys\n"
            "import xnorpipe.runtime.torch_xnor, xnorpipe.runtime.trt_engine, xnorpipe.gpu.trt_plugin\n"
            "import xnorpipe.commands.build_engine, xnorpipe.gpu.trt_build, xnorpipe.gpu.plan, xnorpipe.gpu.device\n"
            "import xnorpipe.gpu.onnx_runner, xnorpipe.commands.bench\n"
            "bad = [m for m in ('tensorrt', 'cupy', 'cuda', 'triton') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_bench_style_instantiation_errors_are_xnorpipe_errors():
    """What `bench --engine trt|torch-xnor` sees on a machine without them: XnorpipeError only."""
    from xnorpipe.runtime import engine_class

    for name, kw in (("torch-xnor", dict(model=_tiny_ir())), ("trt", dict(onnx_path=None))):
        try:
            engine_class(name)(**kw)
        except XnorpipeError as e:
            assert e.message and "\n" not in e.message
        else:
            assert HAS_CUDA, f"{name} constructed without a GPU"


# ------------------------------------------------------------------ torch-xnor through bench


def test_bench_runs_torch_xnor_on_the_cpu_interpreter(train_tree):
    """`bench --engine torch-xnor` end to end without a GPU: --device cpu runs the Triton kernels
    in Triton's interpreter; --xnor-form reaches torch-xnor; its logits match PyTorch's."""
    pytest.importorskip("triton")
    r = subprocess.run([sys.executable, "-m", "xnorpipe.cli", "bench", "--arch", "nin_xnornet", "--random-init",
                        "--engine", "torch,torch-xnor", "--xnor-form", "packed", "--device", "cpu", "--iters", "1",
                        "--warmup", "0", "--data", str(train_tree.path), "--test-subset", "4", "--batch-size", "2",
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    torch_row, xnor_row = (json.loads(line) for line in r.stdout.splitlines())
    assert xnor_row["engine"] == "torch-xnor" and xnor_row["form"] == "packed"
    assert xnor_row["gpu_kernels"] == "triton" and xnor_row["xnor_nodes"] == 7
    assert xnor_row["device"].startswith("cpu") and xnor_row["p50_ms"] > 0
    assert torch_row["engine"] == "torch"
    assert xnor_row["images"] == 4 and xnor_row["agreement"] == 100.0 and xnor_row["median_abs_diff"] <= 1e-4


def test_bench_gpu_options_are_one_line_errors():
    def bench(*args):
        return subprocess.run([sys.executable, "-m", "xnorpipe.cli", "bench", "--arch", "nin_xnornet",
                               "--random-init", "--iters", "1", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, check=False)

    r = bench("--engine", "torch-xnor", "--gpu-kernels", "cuda", "--xnor-form", "packed-bits")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "XnorConv2d only" in lines[0] and "ConvBinarize" in lines[0]  # the model, before any device
    r = bench("--engine", "torch-xnor", "--gpu-kernels", "warp")
    assert r.returncode != 0 and "warp" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ on a GPU


needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
needs_cupy = pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")


@needs_cupy
@pytest.mark.parametrize("kernel", ["auto", "popc"])
@pytest.mark.parametrize("case", [
    dict(n=2, c=96, m=70, k=3, s=1, p=(1, 1, 1, 1), d=1, g=1, hw=(9, 10)),
    dict(n=1, c=300, m=33, k=5, s=2, p=(2, 0, 1, 2), d=2, g=3, hw=(13, 12)),
    dict(n=3, c=7, m=5, k=1, s=1, p=(0, 0, 0, 0), d=1, g=1, hw=(1, 1)),
])
def test_cuda_kernel_matches_reference(case, kernel):
    from xnorpipe.deploy.packing import pack_weights
    from xnorpipe.deploy.reference import xnor_conv2d
    from xnorpipe.runtime.torch_xnor import xnor_conv2d_cuda

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(case["n"], case["c"], *case["hw"], generator=gen)
    x.view(-1)[::11] = float("nan")
    thr = torch.randn(case["c"], generator=gen)
    wshape = (case["m"], case["c"] // case["g"], case["k"], case["k"])
    wbits = pack_weights(torch.rand(*wshape, generator=gen).numpy() < 0.5)
    scale, bias = torch.randn(case["m"], generator=gen), torch.randn(case["m"], generator=gen)
    kw = dict(strides=(case["s"],) * 2, pads=case["p"], dilations=(case["d"],) * 2, group=case["g"], relu=True)
    ref = xnor_conv2d(x, wbits, thr, scale, bias, **kw)
    y = xnor_conv2d_cuda(x.cuda(), wbits, thr, scale, bias, **kw, kernel=kernel).cpu()
    assert torch.equal(y, ref)


def _engine_vs_deploy_module(form, gpu_kernels, cuda_graphs):
    from xnorpipe.deploy.module import DeployModule
    from xnorpipe.runtime import engine_class

    model = _tiny_ir()
    eng = engine_class("torch-xnor")(model=model, form=form, gpu_kernels=gpu_kernels, cuda_graphs=cuda_graphs)
    module = DeployModule(model).cuda()
    outputs = []
    for seed in (1, 2, 1):  # a new input in the same captured shape, then the first again
        x = np.random.default_rng(seed).standard_normal((4, 3, 8, 8)).astype(np.float32)
        with torch.inference_mode():
            ref = module(torch.from_numpy(x).cuda()).cpu().numpy()
        y = eng(x)
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-4)  # same float layers; exact binary layers
        assert (y.argmax(1) == ref.argmax(1)).all()
        outputs.append(y)
    assert not np.array_equal(outputs[0], outputs[1]) and np.array_equal(outputs[0], outputs[2])
    return eng


@needs_gpu
@pytest.mark.parametrize("form", ["packed", "packed-bits"])
@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_torch_xnor_triton_matches_deploy_module(form, cuda_graphs):
    pytest.importorskip("triton")
    eng = _engine_vs_deploy_module(form, "triton", cuda_graphs)
    assert eng.describe()["cuda_graphs"] == ("on" if cuda_graphs else "off")


@needs_cupy
def test_torch_xnor_cuda_kernel_matches_deploy_module():
    _engine_vs_deploy_module("packed", "cuda", True)
