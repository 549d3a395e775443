"""Build TensorRT engines from xnorpipe's ONNX exports.

Portable ONNX builds with stock TensorRT; packed ONNX needs the `xnorpipe::XnorConv2d`
plugin (xnorpipe.trt_plugin, TensorRT >= 10.9), whose AOT kernel is baked into the engine.
TensorRT is imported lazily, with one-line errors naming what is missing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from xnorpipe.errors import XnorpipeError

MIN_PLUGIN_TRT = (10, 9)
TRT_INSTALL_HINT = "install TensorRT >= 10.9 with its Python bindings (NVIDIA's pip index or a TensorRT release)"


def _version(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def import_tensorrt():
    """The tensorrt module, or a one-line XnorpipeError."""
    try:
        import tensorrt as trt
    except ImportError:
        raise XnorpipeError(f"TensorRT is not installed (no `tensorrt` Python package; needs >= "
                            f"{MIN_PLUGIN_TRT[0]}.{MIN_PLUGIN_TRT[1]}): {TRT_INSTALL_HINT}") from None
    except Exception as e:  # e.g. the PyPI stub without NVIDIA's index, or missing libnvinfer
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise XnorpipeError(f"TensorRT failed to import: {msg}") from None
    if not hasattr(trt, "Builder"):
        raise XnorpipeError(f"the installed `tensorrt` package is a stub without the TensorRT "
                            f"libraries: {TRT_INSTALL_HINT}")
    return trt


def require_gpu(what: str) -> None:
    from xnorpipe.gpu.device import gpu_problem

    problem = gpu_problem()
    if problem:
        raise XnorpipeError(f"{what} needs an NVIDIA GPU: {problem}")


def require_plugin_api(trt) -> None:
    if _version(trt.__version__) < MIN_PLUGIN_TRT:
        raise XnorpipeError(f"packed ONNX needs the xnorpipe::XnorConv2d plugin, which needs TensorRT >= "
                            f"{MIN_PLUGIN_TRT[0]}.{MIN_PLUGIN_TRT[1]} (tensorrt.plugin); found "
                            f"{trt.__version__}. Use the portable ONNX, or upgrade TensorRT")
    try:
        import tensorrt.plugin  # noqa: F401
    except ImportError:
        raise XnorpipeError(f"TensorRT {trt.__version__} lacks tensorrt.plugin (quickly deployable "
                            "plugins); use the portable ONNX") from None


def refuse_bit_ops(model, path: str | os.PathLike) -> None:
    """TensorRT's plugin implements XnorConv2d only: a model with any other xnorpipe op (the
    packed-bits form) gets a one-line error before TensorRT is even imported."""
    from xnorpipe.deploy.onnx_export import OP_NAME, custom_op_types

    others = [op for op in custom_op_types(model) if op != OP_NAME]
    if others:
        raise XnorpipeError(f"{path} uses bit-packed activations ({', '.join('xnorpipe::' + op for op in others)}): "
                            "the TensorRT plugin implements XnorConv2d only; export --form packed for TensorRT")


# The contract's attribute defaults: the plugin receives every attribute explicitly.
ATTR_DEFAULTS = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1, "relu": 0}


def prepare_onnx(model) -> int:
    """Mark every XnorConv2d node for TensorRT's plugin importer (namespace, AOT, explicit
    default attributes); returns how many there are. The model is modified in place."""
    from onnx import helper

    from xnorpipe.deploy.onnx_export import DOMAIN, OP_NAME

    count = 0
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_NAME:
            count += 1
            keep = [a for a in node.attribute if a.name not in ("plugin_namespace", "aot")]
            present = {a.name for a in keep}
            del node.attribute[:]
            node.attribute.extend(keep)
            node.attribute.extend(helper.make_attribute(k, v) for k, v in ATTR_DEFAULTS.items()
                                  if k not in present)
            node.attribute.extend([helper.make_attribute("plugin_namespace", DOMAIN),
                                   helper.make_attribute("aot", 1)])
    return count


@dataclass
class BuildResult:
    engine: bytes
    plugin_nodes: int  # XnorConv2d nodes in the ONNX
    plugin_layers: int  # plugin layers in the parsed network
    input_name: str
    profile: tuple[int, int, int] | None  # batch min/opt/max, None for a static batch
    trt_version: str
    seconds: float
    fp16: bool = False
    form: str | None = None  # xnorpipe.form of the ONNX file
    warnings: list[str] = field(default_factory=list)


def build_serialized_engine(onnx_path: str | os.PathLike, *, fp16: bool = False,
                            workspace_mb: int | None = None,
                            timing_cache: str | os.PathLike | None = None, opt_batch: int = 1,
                            max_batch: int = 256, verbose: bool = False) -> BuildResult:
    """Parse an xnorpipe ONNX export and build a serialized engine (not written anywhere).

    Batch profile: min 1, opt `opt_batch`, max `max_batch` when the ONNX batch is dynamic.
    The timing cache, when given, is read if it exists and written back atomically.
    """
    from xnorpipe.deploy.onnx_export import load_onnx, model_metadata
    from xnorpipe.utils import atomic_write_bytes

    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path)  # one-line errors for missing/corrupt files
    refuse_bit_ops(model, onnx_path)
    trt = import_tensorrt()
    require_gpu("building a TensorRT engine")
    plugin_nodes = prepare_onnx(model)
    if plugin_nodes:
        require_plugin_api(trt)
        from xnorpipe.trt_plugin import register_plugin

        register_plugin()

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString(), str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise XnorpipeError(f"TensorRT could not parse {onnx_path}: "
                            f"{errors[0] if errors else 'unknown error'}")
    plugin_layers = sum(1 for i in range(network.num_layers)
                        if "PLUGIN" in str(network.get_layer(i).type))
    if network.num_inputs != 1:
        raise XnorpipeError(f"{onnx_path}: expected one input, found {network.num_inputs}")
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    config = builder.create_builder_config()
    profile_batch = None
    if any(d < 0 for d in shape[1:]):
        raise XnorpipeError(f"{onnx_path}: only the batch dimension may be dynamic, input is {shape}")
    if shape[0] < 0:
        max_batch = max(int(max_batch), int(opt_batch), 1)
        opt_batch = min(max(int(opt_batch), 1), max_batch)
        profile = builder.create_optimization_profile()
        rest = shape[1:]
        profile.set_shape(inp.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
        config.add_optimization_profile(profile)
        profile_batch = (1, opt_batch, max_batch)
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise XnorpipeError(f"--fp16: TensorRT {trt.__version__} builds strongly typed networks only "
                                "(no FP16 builder flag)")
        config.set_flag(trt.BuilderFlag.FP16)  # XnorConv2d stays FP32: its autotune allows only FP32
    cache = None
    if timing_cache is not None:
        tc = Path(timing_cache)
        cache = config.create_timing_cache(tc.read_bytes() if tc.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise XnorpipeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine = bytes(memoryview(serialized))
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return BuildResult(engine=engine, plugin_nodes=plugin_nodes, plugin_layers=plugin_layers,
                       input_name=inp.name, profile=profile_batch, trt_version=trt.__version__,
                       seconds=time.perf_counter() - t0, fp16=fp16,
                       form=model_metadata(model).get("xnorpipe.form"))
