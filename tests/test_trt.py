"""TensorRT side without TensorRT or a GPU: the plugin's shape and launch arithmetic, ONNX
preparation, and the one-line errors of `build-engine` and the `trt` engine. The plugin
definitions themselves are checked where `tensorrt` imports."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xnorpipe.errors import XnorpipeError
from xnorpipe.gpu import plan
from xnorpipe.gpu.device import gpu_problem

ROOT = Path(__file__).resolve().parent.parent
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _trt_usable() -> bool:
    if not HAS_TRT:
        return False
    try:
        import tensorrt as trt
        return hasattr(trt, "Builder")
    except Exception:
        return False


TRT_OK = _trt_usable()
NO_GPU = gpu_problem() is not None


def _binary_layer(c=8, m=6, k=3, group=1, pads=(1, 1, 1, 1), relu=True):
    from xnorpipe.deploy import ir
    from xnorpipe.deploy.packing import pack_weights

    rng = np.random.default_rng(0)
    return ir.BinaryConv(weight_bits=pack_weights(rng.random((m, c // group, k, k)) < 0.5),
                         threshold=rng.standard_normal(c).astype(np.float32),
                         scale=rng.random(m).astype(np.float32), bias=rng.standard_normal(m).astype(np.float32),
                         kernel_shape=(k, k), pads=pads, group=group, relu=relu)


@pytest.fixture
def packed_onnx(tmp_path) -> Path:
    import onnx

    from xnorpipe.deploy.onnx_export import xnor_conv_model

    path = tmp_path / "op.onnx"
    onnx.save(xnor_conv_model(_binary_layer(), (1, 8, 5, 5)), path)
    return path


# ------------------------------------------------------------------ shape arithmetic


@pytest.mark.parametrize("seed", range(40))
def test_output_size_matches_torch_conv(seed):
    rng = np.random.default_rng(seed)
    k, s, d = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
    pads = [int(v) for v in rng.integers(0, 3, 4)]
    h = int(rng.integers((k - 1) * d + 1, 20))
    w = int(rng.integers((k - 1) * d + 1, 20))
    a = plan.conv_attrs((k, k), (s, s), pads, (d, d))
    x = F.pad(torch.zeros(1, 1, h, w), (pads[1], pads[3], pads[0], pads[2]))
    y = F.conv2d(x, torch.zeros(1, 1, k, k), stride=s, dilation=d)
    assert a.output_hw(h, w) == tuple(y.shape[2:])


def test_plugin_output_shape_is_plain_python():
    from xnorpipe.trt_plugin import attrs_of, output_shape

    a = attrs_of(np.array([3, 3], np.int32), np.array([2, 1], np.int32), np.array([1, 0, 2, 1], np.int32),
                 np.array([1, 2], np.int32), 1, 1)
    assert a == plan.ConvAttrs((3, 3), (2, 1), (1, 0, 2, 1), (1, 2), 1, True)
    assert output_shape((4, 8, 10, 9), 6, a) == (4, 6, (10 + 3 - 3) // 2 + 1, (9 + 1 - 5) // 1 + 1)


def test_attr_validation():
    with pytest.raises(ValueError, match="pads"):
        plan.conv_attrs((3, 3), pads=(1, 1))
    with pytest.raises(ValueError, match="strides"):
        plan.conv_attrs((3, 3), strides=(0, 1))
    with pytest.raises(ValueError, match="group"):
        plan.launch_plan((1, 6, 4, 4), 6, plan.conv_attrs((1, 1), group=4))
    with pytest.raises(ValueError, match="empty"):
        plan.launch_plan((1, 6, 2, 2), 6, plan.conv_attrs((5, 5)))


# ------------------------------------------------------------------ launch planning


NIN = [(192, 160, 1, 0, 32), (160, 96, 1, 0, 32), (96, 192, 3, 1, 16), (192, 192, 1, 0, 16),
       (192, 192, 3, 1, 8), (192, 192, 1, 0, 8)]


@pytest.mark.parametrize("c,m,k,p,hw", NIN)
@pytest.mark.parametrize("batch", [1, 256])
def test_nin_layers_use_8x8_tiles(c, m, k, p, hw, batch):
    lp = plan.launch_plan((batch, c, hw, hw), m, plan.conv_attrs((k, k), pads=(p,) * 4, relu=1))
    assert lp.tile == (8, 8)
    assert lp.out_shape == (batch, m, hw, hw)
    assert lp.grid == (batch * (hw // 8) ** 2 * -(-m // 64), 1, 1)
    assert lp.block == (128, 1, 1)
    assert lp.smem_bytes <= plan.SMEM_LIMIT
    assert lp.kernel_args == (batch, c, hw, hw, m, hw, hw, k, k, 1, 1, p, p, 1, 1, 1, 1, 8, 8)


def test_tile_shrinks_for_large_footprints_and_small_outputs():
    a = plan.conv_attrs((9, 9), strides=(2, 2), dilations=(3, 3))
    th, tw = plan.choose_tile(64, 64, a)
    assert th * tw < 64 and plan.smem_bytes(th, tw, a) <= plan.SMEM_LIMIT
    assert plan.choose_tile(3, 1, plan.conv_attrs((1, 1))) == (4, 1)
    assert plan.choose_tile(1, 40, plan.conv_attrs((3, 3))) == (1, 8)
    with pytest.raises(ValueError, match="shared memory"):
        plan.choose_tile(4, 4, plan.conv_attrs((31, 31), dilations=(3, 3)))


@pytest.mark.parametrize("cap,expected", [
    ((7, 5), (75, plan.POPC_KERNEL)), ((8, 0), (80, plan.MMA_KERNEL)), ((8, 6), (86, plan.MMA_KERNEL)),
    ((8, 7), (86, plan.MMA_KERNEL)), ((8, 9), (89, plan.MMA_KERNEL)), ((9, 0), (90, plan.MMA_KERNEL)),
    ((10, 0), (75, plan.POPC_KERNEL)), ((12, 0), (75, plan.POPC_KERNEL)),
])
def test_kernel_selection(cap, expected):
    assert plan.select_kernel(cap) == expected


def test_kernel_selection_errors_and_forcing():
    assert plan.select_kernel((9, 0), kernel="popc") == (90, plan.POPC_KERNEL)
    with pytest.raises(ValueError, match="7.0"):
        plan.select_kernel((7, 0))
    with pytest.raises(ValueError, match="tensor-core"):
        plan.select_kernel((7, 5), kernel="mma")
    with pytest.raises(ValueError, match="tensor-core"):
        plan.select_kernel((10, 0), kernel="mma")
    assert plan.select_kernel((9, 0), archs=[75]) == (75, plan.POPC_KERNEL)
    assert plan.cubin_fits(86, (8, 9)) and plan.cubin_fits(80, (8, 0))
    assert not plan.cubin_fits(90, (8, 9)) and not plan.cubin_fits(80, (9, 0))


def test_aot_launch_with_plain_ints():
    from xnorpipe.trt_plugin import aot_launch

    a = plan.conv_attrs((3, 3), pads=(1, 1, 1, 1), relu=1)
    kernel, arch, params, args = aot_launch((5, 96, 16, 16), 192, a, (9, 0), plan.KERNEL_ARCHS)
    per_image = plan.launch_plan((1, 96, 16, 16), 192, a)
    assert (kernel, arch) == (plan.MMA_KERNEL, 90)
    assert params["grid_x"] == 5 * per_image.grid[0] == plan.launch_plan((5, 96, 16, 16), 192, a).grid[0]
    assert params["block_x"] == 128 and params["shared_mem"] == per_image.smem_bytes
    assert args == list(plan.launch_plan((5, 96, 16, 16), 192, a).kernel_args)
    with pytest.raises(ValueError, match="static"):
        aot_launch((5, object(), 16, 16), 192, a, (9, 0), plan.KERNEL_ARCHS)


# ------------------------------------------------------------------ ONNX preparation


def test_prepare_onnx_marks_plugin_nodes(packed_onnx):
    import onnx

    from xnorpipe.gpu.trt_build import prepare_onnx

    m = onnx.load(packed_onnx)
    assert prepare_onnx(m) == 1
    assert prepare_onnx(m) == 1  # idempotent
    node = [n for n in m.graph.node if n.op_type == "XnorConv2d"][0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_namespace"] == b"xnorpipe" and attrs["aot"] == 1
    assert [a.name for a in node.attribute].count("aot") == 1
    assert {"kernel_shape", "strides", "pads", "dilations", "group", "relu"} <= set(attrs)


def test_prepare_onnx_fills_default_attributes(packed_onnx):
    import onnx

    from xnorpipe.gpu.trt_build import prepare_onnx

    m = onnx.load(packed_onnx)
    node = [n for n in m.graph.node if n.op_type == "XnorConv2d"][0]
    kept = [a for a in node.attribute if a.name in ("kernel_shape", "pads")]
    del node.attribute[:]
    node.attribute.extend(kept)
    prepare_onnx(m)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["strides"] == [1, 1] and attrs["dilations"] == [1, 1]
    assert attrs["group"] == 1 and attrs["relu"] == 0 and attrs["pads"] == [1, 1, 1, 1]


# ------------------------------------------------------------------ error paths


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "xnorpipe.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _one_line_error(r):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
    return lines[0]


@pytest.mark.skipif(TRT_OK and not NO_GPU, reason="TensorRT and a GPU are present: builds would succeed")
def test_build_engine_without_tensorrt_or_gpu(packed_onnx, tmp_path):
    out = tmp_path / "x.engine"
    line = _one_line_error(_cli("build-engine", "--onnx", packed_onnx, "-o", out))
    assert ("TensorRT" in line) or ("GPU" in line)
    assert not out.exists()
    assert not packed_onnx.with_suffix(".engine").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.engine")]  # no temp left


def test_build_engine_input_errors(tmp_path):
    line = _one_line_error(_cli("build-engine", "--onnx", tmp_path / "missing.onnx", "-o", tmp_path / "e"))
    assert "not found" in line
    assert not (tmp_path / "e").exists()
    assert "--onnx" in _one_line_error(_cli("build-engine"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all")
    _one_line_error(_cli("build-engine", "--onnx", bad, "-o", tmp_path / "e"))
    assert not (tmp_path / "e").exists()


@pytest.mark.skipif(TRT_OK and not NO_GPU, reason="TensorRT and a GPU are present")
def test_trt_engine_errors(packed_onnx, tmp_path):
    from xnorpipe.runtime import engine_class

    cls = engine_class("trt")
    assert cls.name == "trt" and cls.device == "cuda"
    with pytest.raises(XnorpipeError, match="--onnx"):
        cls(model=None, onnx_path=None)
    with pytest.raises(XnorpipeError, match="not found"):
        cls(onnx_path=str(tmp_path / "missing.engine"))
    with pytest.raises(XnorpipeError, match="TensorRT|GPU") as e:
        cls(onnx_path=str(packed_onnx))
    assert "\n" not in str(e.value.message)


@pytest.fixture
def packed_bits_onnx(tmp_path) -> Path:
    import onnx

    from xnorpipe.deploy.onnx_export import xnor_conv_bits_model

    path = tmp_path / "bits.onnx"
    onnx.save(xnor_conv_bits_model(_binary_layer(c=32), (1, 32, 5, 5), output_threshold=np.zeros(6)), path)
    return path


def test_packed_bits_is_refused_before_tensorrt(packed_bits_onnx, tmp_path):
    """The plugin implements XnorConv2d only: one line, whether or not TensorRT is here."""
    from xnorpipe.runtime import engine_class

    out = tmp_path / "x.engine"
    line = _one_line_error(_cli("build-engine", "--onnx", packed_bits_onnx, "-o", out))
    for needle in ("bits.onnx", "bit-packed activations", "xnorpipe::XnorConv2dBitsBinarize",
                   "XnorConv2d only", "--form packed"):
        assert needle in line, line
    assert not out.exists()
    with pytest.raises(XnorpipeError, match="bit-packed activations") as e:
        engine_class("trt")(onnx_path=str(packed_bits_onnx))
    assert "\n" not in str(e.value)


def test_trt_engine_error_message_names_tensorrt_when_absent(packed_onnx, monkeypatch):
    """With tensorrt unimportable, the message names TensorRT and how to get it."""
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "tensorrt" or name.startswith("tensorrt."):
            raise ImportError("No module named 'tensorrt'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    from xnorpipe.gpu.trt_build import import_tensorrt

    with pytest.raises(XnorpipeError, match="TensorRT is not installed"):
        import_tensorrt()


# ------------------------------------------------------------------ with TensorRT


@pytest.mark.skipif(not TRT_OK, reason="tensorrt is not importable here (no TensorRT libraries)")
def test_plugin_registers_with_tensorrt():
    import tensorrt as trt

    from xnorpipe.gpu.trt_build import _version, MIN_PLUGIN_TRT
    from xnorpipe.trt_plugin import PLUGIN_ID, register_plugin

    if _version(trt.__version__) < MIN_PLUGIN_TRT:
        pytest.skip(f"TensorRT {trt.__version__} < 10.9: no quickly deployable plugins")
    register_plugin()
    register_plugin()  # idempotent
    import tensorrt.plugin as trtp

    ns, name = PLUGIN_ID.split("::")
    assert hasattr(getattr(trtp.op, ns), name)
    creator = trt.get_plugin_registry().get_creator(name, "1", ns)
    assert creator is not None
