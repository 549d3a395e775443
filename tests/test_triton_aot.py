"""Ahead-of-time builds of the Triton kernels (xnorpipe.gpu.triton_aot) for sm_80, 86, 89, 90:
PTX and cubin for nin_xnornet's binary layers in both ONNX forms (packed: XnorConv2d; packed-
bits: XnorConv2dBits and XnorConv2dBitsBinarize) with the tile table's algorithm (int8 tensor-
core dots for all of them) and two of them with popcount, grouped layers of nin_gc_xnornet
(one reads 16-channel groups from bits and shuffles its output), BitMaxPool and Binarize;
what a TensorRT AOT launch relies on. No GPU: Triton compiles for a named target. Layers that
share a tile configuration share a compiled kernel (scalars are runtime arguments): the first
run compiles about 16 distinct kernels per target (a few minutes on 2 cores); Triton caches
them on disk.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("triton")

from xnorpipe.gpu import triton_aot as ta  # noqa: E402
from xnorpipe.gpu import triton_kernels as tk  # noqa: E402

# nin_xnornet's binary layers: (C, H = W, M, kernel, packed-bits op), pads (k - 1) / 2, relu.
NIN_LAYERS = [(192, 32, 160, 1, "XnorConv2dBitsBinarize"), (160, 32, 96, 1, "XnorConv2dBitsBinarize"),
              (96, 16, 192, 3, "XnorConv2dBitsBinarize"), (192, 16, 192, 1, "XnorConv2dBitsBinarize"),
              (192, 16, 192, 1, "XnorConv2dBits"), (192, 8, 192, 3, "XnorConv2dBitsBinarize"),
              (192, 8, 192, 1, "XnorConv2dBits")]


def representative(capability: int) -> list[ta.AotKernel]:
    out = []
    for c, hw, m, k, bits_op in NIN_LAYERS:
        attrs = dict(num_filters=m, kernel_shape=(k, k), pads=((k - 1) // 2,) * 4, relu=1)
        out.append(ta.compile_op("XnorConv2d", capability=capability, input_shape=(c, hw, hw), **attrs))
        out.append(ta.compile_op(bits_op, capability=capability, input_shape=(-(-c // 32), hw, hw), channels=c,
                                 **attrs))
    # popcount for the same layers: a 3x3 bit layer and a 1x1 float one
    popcount = {"algo": "popcount"}
    out.append(ta.compile_op("XnorConv2dBitsBinarize", capability=capability, input_shape=(3, 16, 16), channels=96,
                             num_filters=192, kernel_shape=(3, 3), pads=(1, 1, 1, 1), relu=1, config=popcount))
    out.append(ta.compile_op("XnorConv2d", capability=capability, input_shape=(192, 32, 32), num_filters=160,
                             kernel_shape=(1, 1), relu=1, config=popcount))
    # nin_gc_xnornet's layer 3: 16 groups of 16 channels (the grouped code path; popcount by the table)
    out.append(ta.compile_op("XnorConv2d", capability=capability, input_shape=(256, 16, 16), num_filters=512,
                             kernel_shape=(3, 3), pads=(1, 1, 1, 1), group=16, relu=1))
    # its packed-bits layer 3 as XnorConv2dBits: groups of 16 channels, two to a word (each word
    # a funnel shift of two input words), output channel-shuffled (popcount by the table)
    out.append(ta.compile_op("XnorConv2dBits", capability=capability, input_shape=(8, 16, 16), channels=256,
                             num_filters=512, kernel_shape=(3, 3), pads=(1, 1, 1, 1), group=16, relu=1,
                             shuffle_output=1))
    # and its layer 4: 4 groups of 128 channels and 128 filters (grouped, dot by the table)
    out.append(ta.compile_op("XnorConv2d", capability=capability, input_shape=(512, 8, 8), num_filters=512,
                             kernel_shape=(1, 1), group=4, relu=1))
    out.append(ta.compile_op("BitMaxPool", capability=capability, input_shape=(3, 32, 32), kernel_shape=(3, 3),
                             strides=(2, 2), pads=(1, 1, 1, 1)))
    out.append(ta.compile_op("Binarize", capability=capability, input_shape=(192, 32, 32)))
    return out


@pytest.fixture(scope="module")
def built() -> dict[int, list[ta.AotKernel]]:
    return {cap: representative(cap) for cap in ta.TARGETS}


def _sass(cubin: bytes) -> str | None:
    tool = ta.cuobjdump_path()
    if tool is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        return subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True, timeout=120).stdout


@pytest.mark.parametrize("capability", ta.TARGETS)
def test_ptx_and_cubin_of_every_op(built, capability):
    kernels = built[capability]
    assert {k.op for k in kernels} == set(tk.OPS)
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    for k in kernels:
        assert k.capability == capability
        assert re.search(rf"\.entry\s+{k.name}\s*\(", k.ptx), k.name
        assert re.search(r"^\.version 8\.0$", k.ptx, re.M) and re.search(rf"^\.target {arch}\b", k.ptx, re.M)
        assert k.cubin[:4] == b"\x7fELF" and k.name.encode() in k.cubin
        assert k.name == tk.KERNEL_NAMES[k.op]


def test_the_table_builds_both_algorithms(built):
    """nin_xnornet's layers and nin_gc_xnornet's 4-group layer run on tensor cores by the table,
    its 16-group layers (32 filters per group) and the two explicit builds on popcount; each
    AotKernel records its algorithm as its config does."""
    for kernels in built.values():
        conv = [k for k in kernels if k.op in tk.CONV_OPS]
        assert all(k.algo == k.config["algo"] for k in conv)
        assert sum(k.algo == "dot" for k in conv) == 2 * len(NIN_LAYERS) + 1
        assert sum(k.algo == "popcount" for k in conv) == 4
        assert all(k.algo is None and "algo" not in k.config for k in kernels if k.op not in tk.CONV_OPS)


# int8 MMAs with int32 accumulators: mma.sync (sm_80/86/89: m16n8k32, s8 x s8 -> s32) and
# wgmma (sm_90a: m64 x N x k32, s32 += s8 x s8).
MMA_SYNC_S8 = re.compile(r"\bmma\.sync\.aligned\.m16n8k32\.row\.col(\.satfinite)?\.s32\.s8\.s8\.s32\b")
WGMMA_S8 = re.compile(r"\bwgmma\.mma_async\.sync\.aligned\.m64n\d+k32\.s32\.s8\.s8\b")


@pytest.mark.parametrize("capability", ta.TARGETS)
def test_conv_kernels_use_their_algorithm_and_round_twice(built, capability):
    """popcount: popc.b32 in hardware; dot: int8 tensor-core MMAs (mma.sync on sm_8x, wgmma on
    sm_90a; what Triton 3.9 emits) and no popc. Both: the output transform as mul.rn then
    add.rn (no FMA: the contract's two roundings, also through a driver's PTX JIT); relu as a
    select that keeps NaN and -0.0 (no max.f32)."""
    for k in built[capability]:
        if k.op not in tk.CONV_OPS:
            assert "popc" not in k.ptx and "mma" not in k.ptx
            continue
        if k.algo == "popcount":
            assert re.search(r"\bpopc\.b32\b", k.ptx) and "mma" not in k.ptx, (k.op, capability)
        else:
            assert "popc" not in k.ptx, (k.op, capability)
            if capability >= 90:
                assert WGMMA_S8.search(k.ptx) and not MMA_SYNC_S8.search(k.ptx), k.op
            else:
                assert MMA_SYNC_S8.search(k.ptx) and "wgmma" not in k.ptx, k.op
            assert not re.search(r"\b(mma|wgmma)\S*\.(f16|bf16|f32\.f32|tf32)\b", k.ptx), k.op  # int8 only
        assert re.search(r"\bmul\.rn\.f32\b", k.ptx) and re.search(r"\badd\.rn\.f32\b", k.ptx), k.op
        assert not re.search(r"\bfma\.\w+\.f32\b", k.ptx), k.op
        assert not re.search(r"\b(max|min)(\.\w+)*\.f32\b", k.ptx), k.op


@pytest.mark.parametrize("capability", ta.TARGETS)
def test_machine_code_runs_the_algorithm_and_no_ffma(built, capability):
    """In the cubin (SASS): POPC for popcount, IMMA (sm_8x) or IGMMA (sm_90a) with S8 operands
    for dot; FMUL and FADD, never FFMA."""
    if ta.cuobjdump_path() is None:
        pytest.skip("cuobjdump not found (neither Triton's bundled one nor the CUDA toolkit's)")
    distinct = {k.cubin: k for k in built[capability] if k.op in tk.CONV_OPS}  # layers share tile configs
    for k in distinct.values():
        sass = _sass(k.cubin)
        if k.algo == "popcount":
            assert re.search(r"\bPOPC\b", sass), k.op
        else:
            mma = r"\bIGMMA\.64x\d+x32\.S8\.S8\b" if capability >= 90 else r"\bIMMA\.16832\.S8\.S8\b"
            assert re.search(mma, sass) and not re.search(r"\bPOPC\b", sass), k.op
        assert not re.search(r"\bFFMA\b", sass), k.op
        assert re.search(r"\bFMUL\b", sass) and re.search(r"\bFADD\b", sass), k.op


@pytest.mark.parametrize("capability", ta.TARGETS)
def test_resources_fit_an_aot_launch(built, capability):
    """Shared memory within the 48 KiB a launch gets without opting in (TensorRT's AOT launch
    cannot opt in), registers within the per-thread and per-block limits, no spills."""
    for k in built[capability]:
        threads = k.num_warps * 32
        assert threads <= 1024
        assert k.registers is not None and 0 < k.registers <= 255, (k.op, k.registers)
        assert k.registers * threads <= 64 * 1024, (k.op, k.registers, threads)
        assert k.shared_bytes <= ta.SHARED_LIMIT
        usage = ta.resource_usage(k.cubin, k.name)
        if usage is None:
            continue  # the limits above are checked from the cubin's own records
        assert usage["REG"] == k.registers == ta.elf_registers(k.cubin, k.name)
        assert usage["SHARED"] + k.shared_bytes <= ta.SHARED_LIMIT, (k.op, usage)
        assert usage["STACK"] == 0 and usage["LOCAL"] == 0, (k.op, usage)  # no register spills


@pytest.mark.parametrize("capability", ta.TARGETS)
def test_parameters_are_inputs_scalars_output_then_two_null_pointers(built, capability):
    """TensorRT passes the input pointers, then the int32 extra args, then the output pointer;
    Triton appends global_scratch and profile_scratch pointers, both of size 0 here (compile_op
    refuses others), which a launcher leaves NULL."""
    for k in built[capability]:
        params = ta.ptx_entry_params(k.ptx, k.name)
        n_in = k.input_count
        assert n_in == {"XnorConv2d": 5, "XnorConv2dBits": 4, "XnorConv2dBitsBinarize": 5, "BitMaxPool": 1,
                        "Binarize": 2}[k.op]
        assert len(params) == n_in + len(k.scalar_args) + 1 + k.trailing_pointer_args
        assert k.trailing_pointer_args == 2
        assert all(p.startswith(".u64 .ptr") for p in params[:n_in])
        assert all(p == ".u32" for p in params[n_in:n_in + len(k.scalar_args)])
        assert all(p.startswith(".u64") for p in params[n_in + len(k.scalar_args):])
        assert k.batch_arg_index is None and len(k.scalar_names) == len(k.scalar_args)
        assert all(-(2**31) <= v < 2**31 for v in k.scalar_args)


def test_launch_scales_only_the_grid_x_extent_with_the_batch(built):
    k = next(k for k in built[90] if k.op == "XnorConv2dBits")
    gx, gy, gz = k.grid_per_image
    grid, block, shared, scalars = ta.launch(k, 256)
    assert grid == (256 * gx, gy, gz) and block == (k.num_warps * 32, 1, 1) and shared == k.shared_bytes
    assert scalars == list(k.scalar_args)
    # one program per 128 pixels x 64 filters (the dot's tile): 256 pixels x 192 filters of layer 5 is 2 x 3
    assert k.config["BLOCK_P"] * k.config["BLOCK_M"] * gx >= 16 * 16 * 192 and gx == 6

    class Expr:  # a stand-in for a TensorRT shape expression: records what launch does with it
        def __init__(self, ops=()):
            self.ops = ops

        def __mul__(self, other):
            assert isinstance(other, int)
            return Expr(self.ops + (("*", other),))

    grid, *_ = ta.launch(k, Expr())
    assert grid[0].ops == (("*", gx),) and grid[1:] == (gy, gz)
    pool = next(k for k in built[90] if k.op == "BitMaxPool")
    assert pool.grid_per_image[1] == 3  # one program row per word plane


def test_compiles_are_cached_and_follow_the_config():
    a = ta.compile_op("BitMaxPool", capability=80, input_shape=(3, 32, 32), kernel_shape=(3, 3), strides=(2, 2),
                      pads=(1, 1, 1, 1))
    assert ta.compile_op("BitMaxPool", capability=80, input_shape=(3, 32, 32), kernel_shape=(3, 3), strides=(2, 2),
                         pads=(1, 1, 1, 1)) is a
    b = ta.compile_op("BitMaxPool", capability=80, input_shape=(3, 32, 32), kernel_shape=(3, 3), strides=(2, 2),
                      pads=(1, 1, 1, 1), config={"BLOCK_P": 64, "num_warps": 2})
    assert b.num_warps == 2 and b.config["BLOCK_P"] == 64 and b.grid_per_image == (4, 3, 1)
    assert a.grid_per_image == (1, 3, 1)


def test_pipeline_depth_is_capped_to_fit_an_aot_launch():
    """The table's num_stages drops until the kernel fits 48 KiB of shared memory (each stage
    holds a step's 32 BLOCK_K x 128 floats here); a depth the caller chose is kept or refused."""
    layer = dict(capability=80, input_shape=(192, 16, 16), num_filters=192, kernel_shape=(1, 1))
    k = ta.compile_op("XnorConv2d", config={"algo": "dot", "BLOCK_K": 4, "BLOCK_M": 32}, **layer)
    assert tk.kernel_config("XnorConv2d", input_shape=(192, 16, 16), num_filters=192, kernel_shape=(1, 1),
                            config={"algo": "dot"})["num_stages"] == 2
    assert k.config["num_stages"] == 1 and k.shared_bytes <= ta.SHARED_LIMIT
    with pytest.raises(ta.AotError, match=r"bytes of shared memory, more than the 49152") as e:
        ta.compile_op("XnorConv2d", config={"algo": "dot", "BLOCK_K": 4, "BLOCK_M": 32, "num_stages": 2}, **layer)
    assert "\n" not in str(e.value)


def test_a_shuffled_bit_output_is_not_built_ahead_of_time():
    """XnorConv2dBitsBinarize with shuffle_output ORs its bits into a zeroed output, which an AOT
    launch does not zero: refused before compiling (the float-output op is built above)."""
    with pytest.raises(ta.AotError, match="zeroed output") as e:
        ta.compile_op("XnorConv2dBitsBinarize", capability=90, input_shape=(8, 16, 16), channels=256,
                      num_filters=512, kernel_shape=(3, 3), group=16, shuffle_output=1)
    assert "\n" not in str(e.value)


def test_bad_requests_get_one_line_errors():
    with pytest.raises(ta.AotError, match="compute capability 60"):
        ta.compile_op("Binarize", capability=60, input_shape=(8, 4, 4))
    with pytest.raises(tk.KernelArgumentError, match="channels"):
        ta.compile_op("XnorConv2dBits", capability=90, input_shape=(2, 4, 4), num_filters=8, kernel_shape=(1, 1))
    with pytest.raises(tk.KernelArgumentError, match="unknown attribute"):
        ta.compile_op("Binarize", capability=90, input_shape=(8, 4, 4), kernel_shape=(1, 1))


def test_elf_register_reader_rejects_what_is_not_a_cubin():
    assert ta.elf_registers(b"not an elf", "k") is None
    assert ta.elf_registers(b"\x7fELF\x02" + b"\0" * 20, "k") is None


@pytest.mark.parametrize("capability", [80, 90])
def test_ptx_without_the_scratch_params_still_assembles(built, capability):
    """The fallback for a launcher that passes exactly (inputs, scalars, output): the two
    trailing pointers removed from the entry; ptxas still accepts the PTX."""
    import triton

    k = next(k for k in built[capability] if k.op == "XnorConv2dBitsBinarize")
    ptx = ta.ptx_without_scratch_params(k)
    assert len(ta.ptx_entry_params(ptx, k.name)) == k.input_count + len(k.scalar_args) + 1
    knob = triton.knobs.nvidia.ptxas_blackwell if capability >= 90 else triton.knobs.nvidia.ptxas
    tool = knob.path if knob.path and Path(knob.path).is_file() else None
    if tool is None:
        pytest.skip("Triton's bundled ptxas not found")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(ptx)
        arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
        run = subprocess.run([tool, f"--gpu-name={arch}", str(Path(tmp) / "k.ptx"), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert (Path(tmp) / "k.cubin").read_bytes()[:4] == b"\x7fELF"
