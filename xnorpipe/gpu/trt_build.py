"""Build TensorRT engines from xnorpipe's ONNX exports.

Portable ONNX builds with stock TensorRT. The packed and packed-bits forms need xnorpipe's
plugins (xnorpipe.gpu.trt_plugin, TensorRT >= 10.9), whose AOT kernels (Triton's, or with
--gpu-kernels cuda the hand-written XnorConv2d kernel) are baked into the engine;
`prepare_onnx` first splits the fused float layers of packed-bits into standard ops that
TensorRT runs natively. TensorRT is imported lazily, with one-line errors naming what is missing.
"""

from __future__ import annotations

import importlib.util
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
    except Exception as e:  # noqa: BLE001  e.g. the PyPI stub without NVIDIA's index, or no libnvinfer
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


def require_plugin_api(trt, gpu_kernels: str = "triton") -> None:
    if _version(trt.__version__) < MIN_PLUGIN_TRT:
        raise XnorpipeError(f"packed ONNX needs xnorpipe's TensorRT plugins, which need TensorRT >= "
                            f"{MIN_PLUGIN_TRT[0]}.{MIN_PLUGIN_TRT[1]} (tensorrt.plugin); found "
                            f"{trt.__version__}. Use the portable ONNX, or upgrade TensorRT")
    try:
        import tensorrt.plugin  # noqa: F401
    except ImportError:
        raise XnorpipeError(f"TensorRT {trt.__version__} lacks tensorrt.plugin (quickly deployable "
                            "plugins); use the portable ONNX") from None
    if gpu_kernels == "triton" and importlib.util.find_spec("triton") is None:
        raise XnorpipeError("the TensorRT plugins compile xnorpipe's Triton kernels at build time: "
                            "pip install triton (or --gpu-kernels cuda for the packed form)")


GPU_KERNELS = ("triton", "cuda")
# fused float layers that prepare_onnx splits into standard ops + xnorpipe::Binarize
SPLIT_OPS = ("ConvBinarize", "AvgPoolBinarize")


def check_plugin_ops(model, path: str | os.PathLike, gpu_kernels: str = "triton") -> None:
    """One-line XnorpipeError, before TensorRT is imported, for a model the plugins cannot build:
    an xnorpipe op without a plugin, or any op but XnorConv2d with --gpu-kernels cuda."""
    from xnorpipe.deploy.onnx import DOMAIN
    from xnorpipe.gpu.trt_plugin import PLUGIN_ATTRS

    if gpu_kernels not in GPU_KERNELS:
        raise XnorpipeError(f"unknown --gpu-kernels {gpu_kernels!r}; choose {' or '.join(GPU_KERNELS)}")
    ops = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
    unknown = [op for op in ops if op not in PLUGIN_ATTRS and op not in SPLIT_OPS]
    if unknown:
        raise XnorpipeError(f"{path}: no TensorRT plugin for {', '.join('xnorpipe::' + op for op in unknown)}")
    shuffled = [n.name or n.output[0] for n in model.graph.node if n.domain == DOMAIN
                and any(a.name == "shuffle_output" and a.i for a in n.attribute)]
    if shuffled:
        # the Triton kernel ORs shuffled bits into a zeroed output, which an AOT launch does not zero
        raise XnorpipeError(f"{path}: {shuffled[0]} has shuffle_output=1 (a channel shuffle folded into the layer), "
                            "which the TensorRT plugins do not take yet; build this arch's engine from its packed "
                            "form (export --form packed)")
    if gpu_kernels == "cuda":
        others = [op for op in ops if op != "XnorConv2d"]
        if others:
            raise XnorpipeError(f"{path} uses bit-packed activations ({', '.join('xnorpipe::' + op for op in others)}):"
                                " --gpu-kernels cuda (the hand-written kernel) implements XnorConv2d only; use "
                                "--gpu-kernels triton, or export --form packed")


def _attr_dict(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _split_fused(node) -> list:
    """ConvBinarize -> Conv (+ Relu) + Binarize; AvgPoolBinarize -> AveragePool + Binarize.
    The standard ops keep the node's attributes; Binarize keeps its name and output."""
    from onnx import helper

    from xnorpipe.deploy.onnx import BINARIZE, OPS, make_node

    at = _attr_dict(node)
    base = node.name or node.output[0]
    op = OPS[node.op_type]
    if len(node.input) != len(op.inputs):
        raise XnorpipeError(f"node {base!r} (xnorpipe::{op.name}) has {len(node.input)} inputs, "
                            f"expected {len(op.inputs)}")
    std = {k: at[k] for k in op.attribute_names if k != "relu" and k in at}  # the standard op's attributes
    if node.op_type == "ConvBinarize":
        y = f"{node.output[0]}.conv"
        out = [helper.make_node("Conv", list(node.input[:3]), [y], name=f"{base}.conv", **std)]
        if int(at.get("relu", op.defaults["relu"])):
            out.append(helper.make_node("Relu", [y], [f"{y}.relu"], name=f"{base}.relu"))
            y = f"{y}.relu"
        threshold = node.input[3]
    else:
        y = f"{node.output[0]}.pool"
        out = [helper.make_node("AveragePool", [node.input[0]], [y], name=f"{base}.pool", count_include_pad=1,
                                **std)]
        threshold = node.input[1]
    out.append(make_node(BINARIZE, [y, threshold], node.output, name=base))
    return out


def _mark_plugin_node(node, gpu_kernels: str) -> None:
    """The node's attributes, in the plugin's order with explicit defaults, then the parser's
    plugin_namespace and aot."""
    from onnx import helper

    from xnorpipe.gpu.trt_plugin import PLUGIN_ATTRS, PLUGIN_DEFAULTS, PLUGIN_INPUTS, PLUGIN_NAMESPACE

    label = f"node {node.name or node.output[0]!r} (xnorpipe::{node.op_type})"
    if len(node.input) != PLUGIN_INPUTS[node.op_type] or len(node.output) != 1:
        raise XnorpipeError(f"{label} has {len(node.input)} inputs and {len(node.output)} outputs; the plugin "
                            f"takes {PLUGIN_INPUTS[node.op_type]} and gives 1")
    at = {k: v for k, v in _attr_dict(node).items() if k not in ("plugin_namespace", "aot")}
    names, defaults = PLUGIN_ATTRS[node.op_type], PLUGIN_DEFAULTS[node.op_type]
    extra = sorted(set(at) - set(names))
    if extra:
        raise XnorpipeError(f"{label} has attribute(s) {', '.join(extra)} that its TensorRT plugin does not take")
    if "cuda_kernel" in names:
        at["cuda_kernel"] = int(gpu_kernels == "cuda")
    values = []
    for name in names:
        if name in at:
            values.append(at[name])
        elif name in defaults:
            values.append(defaults[name])
        else:
            raise XnorpipeError(f"{label} lacks the required attribute {name}")
    del node.attribute[:]
    node.attribute.extend(helper.make_attribute(k, v) for k, v in zip(names, values))
    node.attribute.extend([helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE),
                           helper.make_attribute("aot", 1)])


def prepare_onnx(model, gpu_kernels: str = "triton") -> int:
    """Make an xnorpipe export buildable by TensorRT with xnorpipe's plugins (in place): split
    ConvBinarize and AvgPoolBinarize into standard ops + xnorpipe::Binarize, give every xnorpipe
    node its plugin's attributes in the plugin's order (defaults explicit; `cuda_kernel` on
    XnorConv2d says which kernel) plus `plugin_namespace` and `aot`, and keep the model-local
    functions the nodes now use, so stock ONNX Runtime still runs the result. Returns the
    number of plugin nodes."""
    from xnorpipe.deploy.onnx import DOMAIN, functions_for

    check_plugin_ops(model, model.graph.name or "the model", gpu_kernels)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    nodes = []
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type in SPLIT_OPS:
            nodes.extend(_split_fused(node))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    count = 0
    for node in model.graph.node:
        if node.domain == DOMAIN:
            _mark_plugin_node(node, gpu_kernels)
            count += 1
    if model.functions:
        ops = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
        del model.functions[:]
        model.functions.extend(functions_for(ops, opset))
    return count


@dataclass
class BuildResult:
    engine: bytes
    plugin_nodes: int  # xnorpipe nodes (plugins) in the prepared ONNX
    plugin_layers: int  # plugin layers in the parsed network
    input_name: str
    profile: tuple[int, int, int] | None  # batch min/opt/max, None for a static batch
    trt_version: str
    seconds: float
    fp16: bool = False
    form: str | None = None  # xnorpipe.form of the ONNX file
    gpu_kernels: str = "triton"  # the plugins' kernels
    warnings: list[str] = field(default_factory=list)


def build_serialized_engine(onnx_path: str | os.PathLike, *, fp16: bool = False,
                            workspace_mb: int | None = None,
                            timing_cache: str | os.PathLike | None = None, opt_batch: int = 1,
                            max_batch: int = 256, verbose: bool = False,
                            gpu_kernels: str = "triton") -> BuildResult:
    """Parse an xnorpipe ONNX export and build a serialized engine (not written anywhere).

    `gpu_kernels`: the plugins' kernels, "triton" (every op) or "cuda" (the hand-written
    XnorConv2d kernel: the packed form only).

    Batch profile: min 1, opt `opt_batch`, max `max_batch` when the ONNX batch is dynamic.
    The timing cache, when given, is read if it exists and written back atomically.
    """
    from xnorpipe.deploy.onnx import load_onnx, model_metadata
    from xnorpipe.utils import atomic_write_bytes

    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path, custom_op_library=True)  # one-line errors; plugins need no bodies
    check_plugin_ops(model, onnx_path, gpu_kernels)  # before TensorRT: one line, no GPU needed
    trt = import_tensorrt()
    require_gpu("building a TensorRT engine")
    plugin_nodes = prepare_onnx(model, gpu_kernels)
    if plugin_nodes:
        require_plugin_api(trt, gpu_kernels)
        from xnorpipe.gpu import trt_plugin

        trt_plugin.register_plugins()
        trt_plugin.last_error = None

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
        config.set_flag(trt.BuilderFlag.FP16)  # the plugins stay FP32/INT32: their autotune allows only those
    cache = None
    if timing_cache is not None:
        tc = Path(timing_cache)
        cache = config.create_timing_cache(tc.read_bytes() if tc.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        why = "see its log above"
        if plugin_nodes:
            from xnorpipe.gpu import trt_plugin

            why = trt_plugin.last_error or why
        raise XnorpipeError(f"TensorRT failed to build an engine from {onnx_path} ({why})")
    engine = bytes(memoryview(serialized))
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return BuildResult(engine=engine, plugin_nodes=plugin_nodes, plugin_layers=plugin_layers,
                       input_name=inp.name, profile=profile_batch, trt_version=trt.__version__,
                       seconds=time.perf_counter() - t0, fp16=fp16,
                       form=model_metadata(model).get("xnorpipe.form"), gpu_kernels=gpu_kernels)
