"""ONNX files: write the forms of a model (`export`: all of them or none, one source per arch),
read them back with one-line errors (`load_onnx`), and what a file holds (xnorpipe node counts,
op types, form). Metadata and versions: emit.py and versions.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from xnorpipe.deploy import ir
from xnorpipe.deploy.forms import DEFAULT_OPSET, FIRST_LAYERS, FORM_SETS, FORMS, FORMS_BY_NAME, INT8_FORMS
from xnorpipe.deploy.onnx.emit import build_onnx, check_onnx, has_binary_layers, metadata_props, model_metadata
from xnorpipe.deploy.onnx.ops import BIT_OPS, CONV_OPS, DOMAIN
from xnorpipe.errors import XnorpipeError
from xnorpipe.utils import arch_file_stem, atomic_path, remove_stale_temps, write_error


@dataclass
class ExportedFile:
    form: str
    path: Path
    size_bytes: int
    custom_nodes: int  # XnorConv2d-family nodes (XnorConv2d, XnorConv2dBits, XnorConv2dBitsBinarize)
    float_weight_bytes: int  # float32 initializers
    packed_weight_bytes: int  # int32 bit-word initializers
    bit_nodes: int = 0  # nodes of the other xnorpipe ops (ops.BIT_OPS; packed-bits)


def _summarise(form: str, path: Path, m: onnx.ModelProto) -> ExportedFile:
    float_bytes = sum(len(t.raw_data) for t in m.graph.initializer if t.data_type == TensorProto.FLOAT)
    packed_bytes = sum(len(t.raw_data) for t in m.graph.initializer if t.data_type == TensorProto.INT32)
    return ExportedFile(form, path, path.stat().st_size, count_custom_nodes(m), float_bytes, packed_bytes,
                        count_bit_nodes(m))


def resolve_forms(model: ir.DeployModel, form: str, first_layer: str = "float") -> tuple[list[str], str | None]:
    """A form or a set of forms (`all`, `both`) -> forms to write and a note (a float arch
    asked for several; a set with --first-layer int8, which only INT8_FORMS have)."""
    if first_layer not in FIRST_LAYERS:
        raise XnorpipeError(f"unknown first layer {first_layer!r}; choose {' or '.join(FIRST_LAYERS)}")
    if first_layer == "int8":
        if not has_binary_layers(model):
            raise XnorpipeError(f"{model.arch} is a float arch: --first-layer int8 needs binary layers")
        if form in FORM_SETS:
            forms = [f for f in FORM_SETS[form] if f in INT8_FORMS]
            if not forms:
                raise XnorpipeError(f"--form {form} has no form with an integer first layer "
                                    f"({', '.join(INT8_FORMS)})")
            return forms, f"--first-layer int8: writing {', '.join(forms)} (the forms that have it)"
        if form not in INT8_FORMS:
            raise XnorpipeError(f"--first-layer int8 applies to the {' and '.join(INT8_FORMS)} forms, not {form}")
        return [form], None
    if form in FORM_SETS:
        if has_binary_layers(model):
            return list(FORM_SETS[form]), None
        return ["portable"], f"{model.arch} is a float arch: only the portable form is written"
    if form not in FORMS:
        raise XnorpipeError(f"unknown ONNX form {form!r}; choose {', '.join(FORMS)}, {' or '.join(FORM_SETS)}")
    if FORMS_BY_NAME[form].binary_only and not has_binary_layers(model):
        raise XnorpipeError(f"{model.arch} is a float arch (no binary layers): "
                            f"the {form} form does not exist, use --form portable")
    return [form], None


def export_path(out_dir: str | os.PathLike, arch: str, form: str, first_layer: str = "float") -> Path:
    """`<arch>.<form>.onnx`, or `<arch>.<form>.int8.onnx` with the integer first layer."""
    stem = arch_file_stem(arch)
    return Path(out_dir) / (f"{stem}.{form}.onnx" if first_layer == "float" else f"{stem}.{form}.{first_layer}.onnx")


def _arch_paths(out_dir: Path, arch: str) -> list[Path]:
    """Every file `export` may write for `arch`."""
    return [export_path(out_dir, arch, form, fl) for form in FORMS for fl in FIRST_LAYERS
            if fl == "float" or form in INT8_FORMS]


# Metadata that names the model a file was exported from: files of one arch in one folder must
# agree on it (`export`). A checkpoint's hash, or a random init's seed and calibration.
SOURCE_KEYS = ("xnorpipe.arch", "xnorpipe.checkpoint_sha256", "xnorpipe.random_init", "xnorpipe.random_seed",
               "xnorpipe.random_calibration", "xnorpipe.weights_sha256", "xnorpipe.model_kwargs")


def source_of(meta: dict[str, str]) -> tuple[str | None, ...]:
    return tuple(meta.get(k) for k in SOURCE_KEYS)


def _source_of_file(path: Path) -> tuple[str | None, ...] | None:
    """The source an existing export names; None if it cannot be read."""
    try:
        return source_of(model_metadata(onnx.load(str(path), load_external_data=False)))
    except Exception:  # truncated or foreign: not a file of any source
        return None


def _build_checked(model: ir.DeployModel, form: str, opset: int, first_layer=None) -> onnx.ModelProto:
    m = build_onnx(model, form, opset, first_layer)
    try:
        check_onnx(m)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0]
        raise XnorpipeError(f"internal error: the {form} ONNX model fails the checker: {first}") from None
    return m


@contextlib.contextmanager
def _arch_lock(out_dir: Path, arch: str):
    """Exclusive flock on `<out>/.<arch>.export.lock` for one export of `arch`: concurrent
    exports wait, and the kernel drops the lock of a killed one. Removed when done (the inode
    check retries if the holder before us removed the file we opened). Where flock is missing
    (not POSIX, some NFS) exports of one arch must not run concurrently."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    path = out_dir / f".{arch_file_stem(arch)}.export.lock"
    fd = None
    while fcntl is not None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(e, path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no flock on this file system
            os.close(fd)
            fd = None
            break
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def export(model: ir.DeployModel, forms: Iterable[str], out_dir: str | os.PathLike,
           opset: int = DEFAULT_OPSET, note: Callable[[str], None] | None = None,
           first_layer=None) -> list[ExportedFile]:
    """Build, check and write `<arch>.<form>.onnx` for each form: all of them or none. With
    `first_layer` (an IntegerFirstLayer, forms INT8_FORMS), `<arch>.<form>.int8.onnx`.

    The arch's files in `out_dir` always come from one source (checkpoint or random init, see
    SOURCE_KEYS), also after a SIGKILL at any point:
      1. every form is built and checked in memory, then written to a temp file beside its
         target (`atomic_path`: fsynced; a failure removes the temps, the old files stay);
      2. the arch's files from another source are removed (`note` tells of those this export
         does not replace), so no new file ever lands beside an old one of another source;
      3. the temps are renamed onto their targets, each atomically.
    A kill in step 2 leaves part of the old set, in step 3 part of the new one (the renames take
    milliseconds): never a mix, and the next export completes the set. The next export of the
    arch also removes a killed run's temps (`remove_stale_temps`); an flock keeps concurrent
    exports of one arch apart, so their steps 2 and 3 cannot interleave.
    """
    forms = list(dict.fromkeys(forms))
    built = [(form, _build_checked(model, form, opset, first_layer)) for form in forms]
    variant = "float" if first_layer is None else "int8"
    source = source_of(metadata_props(model, "portable"))
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, out_dir) from None
    written = []
    with _arch_lock(out_dir, model.arch):
        for path in _arch_paths(out_dir, model.arch):  # killed writers' temps, also of files not written now
            remove_stale_temps(path)
        with contextlib.ExitStack() as renames:  # on leaving: every temp renamed onto its target
            for form, m in built:
                path = export_path(out_dir, model.arch, form, variant)
                renames.enter_context(atomic_path(path)).write_bytes(m.SerializeToString())  # fsynced
                written.append((form, path, m))
            targets = {path for _, path, _ in written}
            for path in _arch_paths(out_dir, model.arch):
                if path.is_file() and _source_of_file(path) != source:
                    path.unlink()
                    if path not in targets and note is not None:
                        note(f"removed {path}: exported from another checkpoint or random init")
        _sync_dir(out_dir)
    return [_summarise(form, path, m) for form, path, m in written]


# ----------------------------------------------------------------------------- reading


def missing_functions(m: onnx.ModelProto) -> list[str]:
    """xnorpipe op types that a node (of the graph or of a function) calls but no model-local
    function defines: only a runtime with the custom-op library can run those."""
    defined = {(f.domain, f.name) for f in m.functions}
    nodes = [*m.graph.node, *(n for f in m.functions for n in f.node)]
    return sorted({n.op_type for n in nodes if n.domain == DOMAIN and (n.domain, n.op_type) not in defined})


def load_onnx(path: str | os.PathLike, *, custom_op_library: bool = False) -> onnx.ModelProto:
    """Read an ONNX file with one-line errors (missing, not ONNX, truncated, functions lost).

    `custom_op_library`: the caller runs xnorpipe ops on the custom-op library (or the
    TensorRT plugin), so a model whose function bodies are missing is still runnable.
    """
    path = Path(path)
    if not path.is_file():
        raise XnorpipeError(f"ONNX file not found: {path}")
    try:
        m = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise XnorpipeError(f"{path}: not a readable ONNX model (truncated or not ONNX?): "
                            f"{type(e).__name__}") from None
    if not m.graph.node or not m.opset_import:
        raise XnorpipeError(f"{path}: not a readable ONNX model (no graph)")
    try:  # a file cut at a field boundary parses, but loses initializers or nodes
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise XnorpipeError(f"{path}: invalid ONNX model (truncated?): {first}") from None
    missing = missing_functions(m)
    if missing and not custom_op_library:
        ops = ", ".join(f"{DOMAIN}::{op}" for op in missing)
        raise XnorpipeError(f"{path}: the model-local functions of {ops} are missing (onnx.version_converter "
                            "and some other tools drop them; the checker does not notice), so only the "
                            "xnorpipe custom-op library can run it: re-export with `xnorpipe export --opset N` "
                            "instead of converting, or use a packed-inline form")
    return m


def count_custom_nodes(m: onnx.ModelProto) -> int:
    """XnorConv2d-family nodes: XnorConv2d, XnorConv2dBits, XnorConv2dBitsBinarize."""
    return sum(1 for node in m.graph.node if node.domain == DOMAIN and node.op_type in CONV_OPS)


def count_bit_nodes(m: onnx.ModelProto) -> int:
    """Nodes of the xnorpipe ops outside the XnorConv2d family (ops.BIT_OPS: Binarize, BitMaxPool,
    ConvBinarize, AvgPoolBinarize, ConvIntegerBinarize)."""
    return sum(1 for node in m.graph.node if node.domain == DOMAIN and node.op_type in BIT_OPS)


def model_form(m: onnx.ModelProto) -> str | None:
    """The form an xnorpipe export declares in its metadata (None for a foreign file)."""
    return model_metadata(m).get("xnorpipe.form")


def custom_op_types(m: onnx.ModelProto) -> list[str]:
    """Sorted op types of the model's xnorpipe-domain nodes."""
    return sorted({node.op_type for node in m.graph.node if node.domain == DOMAIN})
