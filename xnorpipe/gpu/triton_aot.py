"""Ahead-of-time builds of the Triton kernels (xnorpipe.gpu.triton_kernels): PTX and cubin per
op, layer shape and GPU target, with what a launcher needs (TensorRT's AOT plugin), no GPU.

    k = compile_op("XnorConv2d", capability=90, input_shape=(192, 32, 32), num_filters=160,
                   kernel_shape=(1, 1), relu=1)
    grid, block, shared, scalars = launch(k, batch)   # batch: an int or a TensorRT expression

Kernel parameters (what a launcher passes, in order): the op's input pointers in ONNX order,
`scalar_args` (int32), the output pointer, then `trailing_pointer_args` (2) pointers that
Triton appends to every kernel: `global_scratch` and `profile_scratch`. Triton's own launcher
passes NULL for both when the compiled kernel's `global_scratch_size` / `profile_scratch_size`
are 0, and compile_op refuses a kernel where either is not, so NULL is always valid for these
kernels. TensorRT's AOT launch passes (inputs, extra int args, outputs) and, per
torch-TensorRT's Triton AOT path, NULL for parameters it was not given (not checked here on a
GPU); `ptx_without_scratch_params` removes the two from the PTX entry for a launcher that
must match the parameter list exactly. No kernel takes the batch size (`batch_arg_index` is
None): the grid's x extent is batch * gx.

The PTX is pinned to ISA 8.0 (CUDA 12.0, drivers >= 525): Triton 3.9 would otherwise write its
bundled ptxas's ISA (8.8 for sm_8x, 9.4 for sm_90: only CUDA 13.4 drivers load that), and
TensorRT hands the PTX to the driver's JIT at engine load. sm_90 builds are sm_90a (Triton's
choice): that PTX and cubin run on sm_90 GPUs (H100, H200) only. Every build has
enable_fp_fusion=False: the output transform is `mul.rn.f32` then `add.rn.f32`, which no PTX
JIT contracts into an FMA.

Convolutions build either algorithm of the tile table (`AotKernel.algo`; `config={"algo":
"popcount" | "dot"}` overrides the table): "popcount" runs `popc.b32` on the CUDA cores, "dot"
int8 tensor-core MMAs with int32 accumulators: Triton 3.9 emits `mma.sync.aligned.m16n8k32.
row.col.satfinite.s32.s8.s8.s32` for sm_80/86/89 and `wgmma.mma_async.sync.aligned.m64nNk32.
s32.s8.s8` for sm_90a (N = the pixel tile). Every kernel fits the 48 KiB of shared memory an
AOT launch gets without opting in: where the table's pipeline depth (num_stages) would need
more, compile_op lowers it, and it refuses a kernel that still does not fit.

Compiled kernels are cached on disk by Triton itself (TRITON_CACHE_DIR, default
~/.triton/cache), keyed by the kernel source, its constexprs, the options, the target and the
ptxas version, and in this process by the call's arguments.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from xnorpipe.errors import XnorpipeError

TARGETS = (80, 86, 89, 90)  # compute capabilities compiled ahead of time
AOT_PTX_VERSION = 80  # PTX ISA 8.0, see the module docstring
SHARED_LIMIT = 48 * 1024  # per block without opting in, which TensorRT's AOT launch cannot
POINTER_ALIGN = 16  # tensors are at least this aligned: TensorRT's are 256-byte aligned, torch's too


class AotError(XnorpipeError):
    """A kernel that cannot be built for, or launched by, an AOT launcher: one line."""


@dataclass(frozen=True)
class AotKernel:
    op: str
    name: str  # entry symbol in the PTX and cubin
    capability: int
    ptx: str
    cubin: bytes
    num_warps: int
    shared_bytes: int
    registers: int | None  # per thread, read from the cubin
    grid_per_image: tuple[int, int, int]  # launch grid = (batch * gx, gy, gz)
    scalar_args: tuple[int, ...]  # int32 kernel arguments after the input pointers, batch excluded
    batch_arg_index: int | None  # where the batch goes among scalar_args (None: no kernel takes it)
    trailing_pointer_args: int  # Triton's global_scratch and profile_scratch pointers: pass NULL
    ptx_version: str = "8.0"
    config: dict = field(default_factory=dict, hash=False, compare=False)  # the tile config (kernel_config)
    scalar_names: tuple[str, ...] = ()
    input_count: int = 0  # input pointers before the scalars (the op's ONNX inputs)
    algo: str | None = None  # convolutions: "popcount" (CUDA cores) or "dot" (int8 tensor cores)


_cache: dict = {}
_cache_lock = threading.Lock()


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def compile_op(op: str, *, capability: int, input_shape: tuple[int, int, int], num_filters: int | None = None,
               channels: int | None = None, config: dict | None = None, ptx_version: int = AOT_PTX_VERSION,
               **attrs) -> AotKernel:
    """PTX and cubin of `op`'s kernel for one layer: input_shape = (C or words, H, W) per image,
    num_filters (M) and `channels` (C, bit-input convs) and attrs as in the wrappers (conv:
    kernel_shape, strides, pads, dilations, group, relu; BitMaxPool: kernel_shape, strides,
    pads). `config` overrides the tile table (see triton_kernels.launch_spec)."""
    key = (op, int(capability), _freeze(input_shape), num_filters, channels, _freeze(config), ptx_version,
           _freeze(attrs))
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    kernel = _compile(op, int(capability), input_shape, num_filters, channels, config, ptx_version, attrs)
    with _cache_lock:
        _cache[key] = kernel
    return kernel


def _compile(op, capability, input_shape, num_filters, channels, config, ptx_version, attrs) -> AotKernel:
    try:
        import triton
        from triton.backends.compiler import GPUTarget
    except ImportError as e:
        raise AotError(f"AOT builds need Triton (pip install triton): {e}") from None
    from xnorpipe.gpu import triton_kernels as tk

    if not 75 <= capability < 200:
        raise AotError(f"compute capability {capability} is not a CUDA target Triton builds for (75 and up)")
    spec = tk.launch_spec(op, input_shape=input_shape, num_filters=num_filters, channels=channels, config=config,
                          **attrs)
    if spec.zeroed_output:
        raise AotError(f"{op}: with shuffle_output and group > 1 the kernel ORs bits into a zeroed output, which an "
                       "AOT launch does not zero")
    fn = getattr(tk.kernels(interpret=False), spec.kernel)
    signature, n_inputs = _signature(fn, spec)
    pointer_attrs = {(i,): [["tt.divisibility", POINTER_ALIGN]] for i, t in enumerate(signature.values())
                     if t.startswith("*")}
    src = triton.compiler.ASTSource(fn, signature, constexprs=dict(spec.constexprs), attrs=pointer_attrs)
    # The table's pipeline depth is capped where the kernel would need more shared memory than
    # an AOT launch gets (each stage holds a copy of the step's loads); a depth the caller
    # chose (config["num_stages"]) is kept, and refused below if it does not fit.
    stages = spec.num_stages
    while True:
        options = {"num_warps": spec.num_warps, "num_stages": stages, "ptx_version": ptx_version,
                   **tk.COMPILE_OPTIONS}
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)
        except Exception as e:  # Triton's compile errors are long; keep the first line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AotError(f"{op}: Triton could not build sm_{capability}: {first}") from e
        if compiled.metadata.shared <= SHARED_LIMIT or stages == 1 or "num_stages" in (config or {}):
            break
        stages -= 1
    md = compiled.metadata
    if md.shared > SHARED_LIMIT:
        raise AotError(f"{op}: the sm_{capability} kernel needs {md.shared} bytes of shared memory, more than the "
                       f"{SHARED_LIMIT} an AOT launch gets without opting in; choose smaller tiles or fewer stages")
    for what in ("global_scratch_size", "profile_scratch_size", "tmem_size"):
        if getattr(md, what, 0):
            raise AotError(f"{op}: the sm_{capability} kernel needs {what} = {getattr(md, what)}, which an AOT "
                           "launcher does not allocate")
    if getattr(md, "num_ctas", 1) != 1 or getattr(md, "launch_cooperative_grid", False) or getattr(md, "launch_pdl",
                                                                                                   False):
        raise AotError(f"{op}: the sm_{capability} kernel needs a launch feature an AOT launcher does not set")
    ptx = compiled.asm["ptx"]
    cubin = bytes(compiled.asm["cubin"])
    params = ptx_entry_params(ptx, md.name)
    expected = len(spec.pointer_types) + len(spec.scalars)
    trailing = len(params) - expected
    if trailing < 0 or any(not p.startswith(".u64") for p in params[expected:]):
        raise AotError(f"{op}: unexpected parameters in the PTX of {md.name}: {params}")
    return AotKernel(op=op, name=md.name, capability=capability, ptx=ptx, cubin=cubin, num_warps=md.num_warps,
                     shared_bytes=int(md.shared), registers=cubin_registers(cubin, md.name),
                     grid_per_image=spec.grid_per_image, scalar_args=spec.scalars, batch_arg_index=None,
                     trailing_pointer_args=trailing, ptx_version=f"{ptx_version // 10}.{ptx_version % 10}",
                     config={**spec.config(), "num_stages": stages}, scalar_names=spec.scalar_names,
                     input_count=n_inputs, algo=spec.algo)


def _signature(fn, spec) -> tuple[dict[str, str], int]:
    """Triton signature of `fn` for the launch `spec`: input pointers, int32 scalars, output
    pointer, constexprs (checked against the kernel's declaration)."""
    runtime = [p.name for p in fn.params if not p.is_constexpr]
    n_inputs = len(spec.pointer_types) - 1
    scalars = runtime[n_inputs:-1]
    if len(runtime) != n_inputs + len(spec.scalars) + 1 or tuple(scalars) != spec.scalar_names:
        raise AotError(f"{spec.kernel}'s parameters {runtime} do not follow its launch description")
    types = dict(zip(runtime[:n_inputs], spec.pointer_types[:-1]))
    types.update({name: "i32" for name in scalars})
    types[runtime[-1]] = spec.pointer_types[-1]
    return {p.name: "constexpr" if p.is_constexpr else types[p.name] for p in fn.params}, n_inputs


def launch(k: AotKernel, batch) -> tuple[tuple, tuple, int, list]:
    """(grid, block, dynamic shared bytes, scalar args) of a launch of `k` for `batch` images.
    `batch` may be an int or a symbolic expression (TensorRT's): it is only multiplied by an int
    or passed through."""
    gx, gy, gz = k.grid_per_image
    grid = (batch if gx == 1 else batch * gx, gy, gz)
    scalars = list(k.scalar_args)
    if k.batch_arg_index is not None:
        scalars.insert(k.batch_arg_index, batch)
    return grid, (k.num_warps * 32, 1, 1), k.shared_bytes, scalars


def ptx_without_scratch_params(k: AotKernel) -> str:
    """k's PTX with Triton's trailing scratch pointer params removed from the entry, for a
    launcher that must pass exactly (inputs, scalars, output). Safe because compile_op only
    returns kernels whose scratch sizes are 0, and checked: the body never reads them."""
    m = re.search(r"(\.entry\s+" + re.escape(k.name) + r"\s*\()(.*?)(\))", k.ptx, re.S)
    if m is None:
        raise AotError(f"no .entry {k.name} in the PTX")
    decls = m.group(2).split(",")
    keep = len(decls) - k.trailing_pointer_args
    for decl in decls[keep:]:
        param = decl.split()[-1]
        if len(re.findall(re.escape(param) + r"\b", k.ptx)) != 1:  # its declaration only
            raise AotError(f"{k.name} reads its scratch parameter {param}: it cannot be removed")
    params = ",".join(decls[:keep]).rstrip()
    return k.ptx[:m.start(2)] + params + "\n" + k.ptx[m.end(2):]


# --------------------------------------------------------------------------- PTX and cubin


def ptx_entry_params(ptx: str, name: str) -> list[str]:
    """The `.param` types of PTX entry `name`, in order (e.g. ['.u64 .ptr .global .align 16', '.u32'])."""
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if m is None:
        raise AotError(f"no .entry {name} in the PTX")
    return [p.group(1).strip() for p in re.finditer(r"\.param\s+(.*?)\s*\w+(?:,|$)", m.group(1).strip(), re.M)]


def cuobjdump_path() -> str | None:
    """cuobjdump: Triton's bundled one, else the CUDA toolkit's."""
    try:
        import triton

        bundled = triton.knobs.nvidia.cuobjdump.path
        if bundled and Path(bundled).is_file():
            return bundled
    except Exception:  # an older Triton without the knob, or no bundled tools
        pass
    for candidate in (shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def resource_usage(cubin: bytes, name: str) -> dict[str, int] | None:
    """cuobjdump --dump-resource-usage for kernel `name`: REG, STACK, SHARED, LOCAL, ... or None
    without cuobjdump."""
    tool = cuobjdump_path()
    if tool is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True, text=True,
                             timeout=60).stdout
    m = re.search(r"Function\s+" + re.escape(name) + r":\s*\n\s*(.*)", out)
    if m is None:
        return None
    return {k: int(v) for k, v in re.findall(r"([A-Z_]+(?:\[\d+\])?):(\d+)", m.group(1))}


def cubin_registers(cubin: bytes, name: str) -> int | None:
    """Registers per thread of kernel `name`: cuobjdump's figure where cuobjdump exists, else
    the cubin's own record (`elf_registers`)."""
    usage = resource_usage(cubin, name)
    if usage and "REG" in usage:
        return usage["REG"]
    return elf_registers(cubin, name)


_EIATTR_REGCOUNT = 0x2F
_EIFMT_SVAL = 0x04


def elf_registers(cubin: bytes, name: str) -> int | None:
    """Registers per thread from the cubin's `.nv.info` section: ptxas writes one
    EIATTR_REGCOUNT record (symbol index, count) per kernel. None if the ELF has none."""
    try:
        if cubin[:4] != b"\x7fELF" or cubin[4] != 2:  # 64-bit ELF only
            return None
        (shoff,) = struct.unpack_from("<Q", cubin, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]

        def cstr(off: int) -> str:
            return cubin[off:cubin.index(b"\0", off)].decode(errors="replace")

        names = sections[shstrndx][4]
        by_name = {cstr(names + sec[0]): sec for sec in sections}
        symtab, info = by_name.get(".symtab"), by_name.get(".nv.info")
        if symtab is None or info is None:
            return None
        strtab = sections[symtab[6]][4]
        symbols = [cstr(strtab + struct.unpack_from("<I", cubin, symtab[4] + i * 24)[0])
                   for i in range(symtab[5] // 24)]
        pos, end = info[4], info[4] + info[5]
        while pos + 4 <= end:
            fmt, attr, size = struct.unpack_from("<BBH", cubin, pos)
            if fmt != _EIFMT_SVAL:  # fixed-size records: 2 bytes (no value) or 4 (a 16-bit value)
                pos += 2 if fmt == 1 else 4
                continue
            if attr == _EIATTR_REGCOUNT and size == 8:
                sym, count = struct.unpack_from("<II", cubin, pos + 4)
                if sym < len(symbols) and symbols[sym] == name:
                    return count
            pos += 4 + size
    except (struct.error, ValueError, IndexError):
        return None
    return None
