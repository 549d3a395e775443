"""The Triton kernels (xnorpipe.gpu.triton_kernels) against xnorpipe.deploy.reference, bit for
bit, in Triton's interpreter on the CPU; their argument checks; the tile table.

The convolutions have two algorithms ("popcount" on CUDA cores, "dot" on int8 tensor cores):
every random convolution case and every network layer case runs with both (the dot pass adds
~30 s to this file's ~45 s on one free core; should CI time get tight, `index % 2 == 0` in
test_random_case_is_bit_exact halves it).

The wrappers run CPU tensors through interpreter copies of the kernels and CUDA tensors through
compiled ones, whatever TRITON_INTERPRET says and whichever test imported triton first (see
`triton_kernels.kernels`), so these tests and the AOT tests share one pytest process. The same
random cases run on a GPU in the GPU session (xnorpipe.gpu.kernel_cases).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")

from xnorpipe.gpu import kernel_cases as kc  # noqa: E402
from xnorpipe.gpu import triton_kernels as tk  # noqa: E402

N_RANDOM = 300
SEED = 20261130


@pytest.fixture(scope="module")
def cases() -> list[kc.Case]:
    return kc.random_cases(N_RANDOM, SEED)


@pytest.fixture(scope="module")
def layers() -> list[kc.Case]:
    return kc.layer_cases()


@pytest.mark.parametrize("index", range(N_RANDOM))
def test_random_case_is_bit_exact(cases, index):
    """Convolutions with both algorithms, the other ops with their one kernel."""
    case = cases[index]
    ok, detail = kc.run_case(case, "cpu", algo="popcount")
    assert ok, detail
    if case.op in tk.CONV_OPS:
        ok, detail = kc.run_case(case, "cpu", algo="dot")
        assert ok, detail


N_LAYER_CASES = 24


@pytest.mark.parametrize("algo", tk.ALGOS)
@pytest.mark.parametrize("index", range(N_LAYER_CASES))
def test_network_layer_is_bit_exact(layers, index, algo):
    """nin_xnornet's layers and three of nin_gc_xnornet's (bit forms shuffled, as exported), at
    3x3 pixels."""
    ok, detail = kc.run_case(layers[index], "cpu", algo=algo)
    assert ok, detail


def _slot_cases(cases) -> list[kc.Case]:
    """Conv cases whose filters have several (tap, word) slots, one per kind of slot advance:
    1, 2 and 3 words per group, bit and float inputs, a grouped one."""
    picked, seen = [], set()
    for c in cases:
        if c.op not in tk.CONV_OPS or c.inputs["W"].shape[1] * c.inputs["W"].shape[2] < 3:
            continue
        key = (c.inputs["W"].shape[3], c.op == "XnorConv2d", c.attrs["group"] > 1)
        if key not in seen and (key[0] <= 3):
            seen.add(key)
            picked.append(c)
    return picked


@pytest.mark.parametrize("block_k", [1, 2, 4])
def test_dot_steps_advance_through_taps_and_words(cases, block_k):
    """The dot carries each slot's (word, tap row, tap column) from step to step; BLOCK_K below,
    at and above the words per group makes every kind of wrap happen (the interpreter's own
    table takes up to 8 slots per step, so most layers there run one step)."""
    picked = _slot_cases(cases)
    assert len({(c.inputs["W"].shape[3], c.op == "XnorConv2d") for c in picked}) >= 5
    for case in picked:
        ok, detail = kc.run_case(case, "cpu", {"BLOCK_K": block_k, "BLOCK_P": 16, "BLOCK_M": 32}, algo="dot")
        assert ok, f"BLOCK_K={block_k}: {detail}"


def test_interpreter_int8_dot_is_integer_exact():
    """Triton 3.9's interpreter runs tl.dot as np.matmul(a, b, dtype=acc's dtype) + acc: int8
    operands with an int32 accumulator are summed in integers, not through float32 (which would
    round a sum above 2**24). The kernels' sums stay below 2**24 anyway (launch_spec refuses
    taps * C/group >= 2**24); this checks the interpreter itself, with sums near 2**25."""
    import triton.language as tl

    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = True

        @triton.jit
        def dot_kernel(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
            rm, rn, rk = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
            a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
            b = tl.load(b_ptr + rk[:, None] * N + rn[None, :])
            acc = tl.load(c_ptr + rm[:, None] * N + rn[None, :])
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc)

    m, n, k = 16, 16, 4096
    rng = np.random.default_rng(7)
    a = torch.from_numpy(rng.choice(np.array([127, 126, -1], dtype=np.int8), (m, k)))
    b = torch.from_numpy(rng.choice(np.array([-128, -127, 3], dtype=np.int8), (k, n)))
    c = torch.from_numpy(rng.integers(-(2**20), 2**20, (m, n)).astype(np.int32))
    want = c.numpy().astype(np.int64) + a.numpy().astype(np.int64) @ b.numpy().astype(np.int64)
    assert ((np.abs(want) > 2**24) & (want % 2 != 0)).any()  # odd sums above 2**24: not float32 values
    with tk._interpreter_lock:
        dot_kernel[(1,)](a, b, c, m, n, k)
    assert np.array_equal(c.numpy().astype(np.int64), want)


def test_layer_case_count(layers):
    assert len(layers) == N_LAYER_CASES


def test_random_cases_cover_the_contract(cases):
    """The cases hold what the contract leaves to kernels; a generator change that drops one
    of these would make the exactness tests above weaker without failing them."""
    ops = {c.op for c in cases}
    assert ops == set(tk.OPS)
    conv = [c for c in cases if c.op in tk.CONV_OPS]
    batches = {next(iter(c.inputs.values())).shape[0] for c in cases}
    assert {1, 5} <= batches
    assert any(c.attrs["strides"] != (1, 1) for c in conv)
    assert any(2 in c.attrs["dilations"] for c in conv)
    assert {c.attrs["group"] for c in conv} >= {1, 2, 3, 4}
    grouped_bits = [c for c in conv if c.op != "XnorConv2d" and c.attrs["group"] > 1]
    per_group = {c.attrs["channels"] // c.attrs["group"] for c in grouped_bits}
    assert {16, 24, 32, 40, 64} <= per_group and any(cg % 8 for cg in per_group)
    # a group starting inside a word and reaching into the next (Cg = 24: group 1 is bits 24..47)
    assert any(any((g * cg) % 32 + cg > 32 and (g * cg) % 32 for g in range(c.attrs["group"]))
               for c in grouped_bits for cg in [c.attrs["channels"] // c.attrs["group"]])
    for op in ("XnorConv2dBits", "XnorConv2dBitsBinarize"):
        shuffled = [c for c in grouped_bits if c.op == op and c.attrs.get("shuffle_output")]
        assert any((c.attrs["channels"] // c.attrs["group"]) % 32 for c in shuffled), op
    assert any(c.inputs["W"].shape[1] == 3 and max(c.attrs["pads"]) == 2 for c in conv)  # pads = kernel - 1
    assert any(c.inputs["W"].shape[1] == 5 for c in conv)
    channels = [c.inputs["X"].shape[1] if "X" in c.inputs else c.attrs.get("channels", 32) for c in cases
                if c.op != "BitMaxPool"]
    assert any(ch % 32 for ch in channels) and any(ch % 32 == 0 for ch in channels)
    assert any(c.inputs["W"].shape[0] % 32 for c in conv) and any(c.inputs["W"].shape[0] > 32 for c in conv)
    floats = [c.inputs["X"] for c in cases if "X" in c.inputs]
    assert any(np.isnan(x).any() for x in floats)
    assert any(np.isposinf(x).any() for x in floats) and any(np.isneginf(x).any() for x in floats)
    # thresholds exactly at an input value of their channel
    assert any(np.isin(c.inputs["threshold"], c.inputs["X"]).any() for c in cases if "threshold" in c.inputs)
    assert any(np.isinf(c.inputs["scale"]).any() for c in conv)  # NaN outputs where a sum is 0
    bits = [c for c in cases if c.op == "XnorConv2dBitsBinarize"][:20]
    assert any(np.isin(c.inputs["output_threshold"], _float_output(c)).any() for c in bits)


def _float_output(case: kc.Case) -> np.ndarray:
    from xnorpipe.deploy import reference

    a = dict(case.attrs)
    channels = a.pop("channels")
    i = case.inputs
    return reference.xnor_conv2d_bits(i["Xp"], channels, i["W"], i["scale"], i["bias"], **a)


def test_checker_catches_a_difference():
    """compare() is the assertion of every case: it must see a flipped bit and a NaN/number
    mismatch, and accept NaNs of another sign or payload."""
    a = np.array([1.0, np.nan, -0.0], dtype=np.float32)
    assert kc.compare(a, a.copy())[0]
    other_nan = a.copy()
    other_nan.view(np.uint32)[1] = 0xFFC00001
    assert kc.compare(other_nan, a)[0]
    for i, value in ((0, np.nextafter(np.float32(1.0), np.float32(2.0))), (1, 0.0), (2, 0.0)):
        b = a.copy()
        b[i] = value
        ok, detail = kc.compare(b, a)
        assert not ok and f"first at [{i}]" in detail
    w = np.array([[5, -1]], dtype=np.int32)
    assert not kc.compare(w ^ np.array([[0, -(2**31)]], dtype=np.int32), w)[0]  # bit 31 of one word
    assert not kc.compare(w.astype(np.int64), w)[0]


def test_algo_reaches_only_the_convolutions(cases):
    """run_case(algo=...) sets the convolutions' algorithm (named in a failure's detail) and
    leaves the single-kernel ops alone."""
    assert kc.CONV_OPS == tk.CONV_OPS
    pool = next(c for c in cases if c.op == "BitMaxPool")
    assert kc.run_case(pool, "cpu", algo="dot") == (True, "")
    conv = next(c for c in cases if c.op == "XnorConv2dBits")
    ok, detail = kc.run_case(conv, "cpu", {"BLOCK_P": 48}, algo="dot")
    assert not ok and "algo=dot" in detail and "power of two" in detail


def test_a_wrong_kernel_fails_its_case(cases, monkeypatch):
    """run_case reports a kernel that drops the bias, with the case's description."""
    case = next(c for c in cases if c.op == "XnorConv2d" and np.abs(c.inputs["bias"]).max() > 0)
    real = tk.xnor_conv2d

    def no_bias(x, w, threshold, scale, bias, **kw):
        return real(x, w, threshold, scale, torch.zeros_like(bias), **kw)

    monkeypatch.setattr(tk, "xnor_conv2d", no_bias)
    ok, detail = kc.run_case(case, "cpu")
    assert not ok and "XnorConv2d(" in detail and "differ" in detail


# ------------------------------------------------------------------------ wrapper behaviour


def _conv_inputs(n=2, c=40, h=5, w=6, m=37, k=3, group=1, seed=0):
    rng = np.random.default_rng(seed)
    words = -(-(c // group) // 32)
    return (torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32)),
            torch.from_numpy(rng.integers(-(2**31), 2**31, (m, k, k, words)).astype(np.int32)),
            torch.from_numpy(rng.standard_normal(c).astype(np.float32)),
            torch.from_numpy(rng.standard_normal(m).astype(np.float32)),
            torch.from_numpy(rng.standard_normal(m).astype(np.float32)))


def test_non_contiguous_inputs_give_the_contiguous_answer():
    x, w, t, s, b = _conv_inputs()
    want = tk.xnor_conv2d(x, w, t, s, b, pads=(1, 1, 1, 1))
    x_t = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # same values, other strides
    s2 = torch.stack([s, s], 1)[:, 0]  # a strided view
    assert not x_t.is_contiguous() and not s2.is_contiguous()
    got = tk.xnor_conv2d(x_t, w, t, s2, b, pads=(1, 1, 1, 1))
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_empty_batch_gives_empty_outputs():
    x, w, t, s, b = _conv_inputs(n=0)
    assert tk.xnor_conv2d(x, w, t, s, b, pads=(1, 1, 1, 1)).shape == (0, 37, 5, 6)
    xp = torch.zeros((0, 2, 5, 6), dtype=torch.int32)
    assert tk.xnor_conv2d_bits(xp, w, s, b, channels=40).shape == (0, 37, 3, 4)
    y = tk.xnor_conv2d_bits(xp, w, s, b, channels=40, output_threshold=s)
    assert y.shape == (0, 2, 3, 4) and y.dtype == torch.int32
    assert tk.bit_max_pool(xp, kernel_shape=(2, 2), strides=(2, 2)).shape == (0, 2, 2, 3)
    assert tk.binarize(x, t).shape == (0, 2, 5, 6)


@pytest.mark.parametrize("algo", tk.ALGOS)
def test_explicit_config_changes_the_tiles_not_the_answer(algo):
    x, w, t, s, b = _conv_inputs(n=1, m=70, k=1)
    want = tk.xnor_conv2d(x, w, t, s, b)
    got = tk.xnor_conv2d(x, w, t, s, b, config={"algo": algo, "BLOCK_P": 16, "BLOCK_M": 32, "BLOCK_K": 1})
    assert tk.kernel_config("XnorConv2d", input_shape=(40, 5, 6), num_filters=70, kernel_shape=(1, 1),
                            config={"BLOCK_P": 16, "algo": algo})["grid_per_image"] == [2 * 2, 1, 1]
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("call, message", [
    (lambda x, w, t, s, b: tk.xnor_conv2d(x.double(), w, t, s, b), "X must be float32, got float64"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x[0], w, t, s, b), "X must have 4 dimensions"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x.numpy(), w, t, s, b), "X must be a torch.Tensor"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w[..., :1].contiguous(), t, s, b), "does not match"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t[:-1], s, b), "threshold must be [40]"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t, s, b[:3]), "bias must be [37]"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t, s, b, group=3), "not divisible by group 3"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t, s, b, strides=(0, 1)), "strides"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t, s, b, pads=(1, 1)), "pads"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t, s, b, dilations=(9, 9)), "output size"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t, s, b, config={"BLOCK_P": 48}), "power of two"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t, s, b, config={"GROUPED": True}), "unknown or fixed"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t, s, b, config={"ALGO": "dot"}), "unknown or fixed"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t, s, b, config={"algo": "tensor"}), "algo must be one of"),
    (lambda x, w, t, s, b: tk.binarize(x, t, config={"algo": "dot"}), "unknown or fixed entry 'algo'"),
    (lambda x, w, t, s, b: tk.xnor_conv2d(x, w, t, s.to("meta"), b), "all tensors must be on one device"),
    (lambda x, w, t, s, b: tk.xnor_conv2d_bits(w[:2, :, :1].contiguous(), w, s, b, channels=40),
     "words per pixel"),
    (lambda x, w, t, s, b: tk.xnor_conv2d_bits(tk.binarize(x, t), w, s, b, channels=0), "channels"),
    (lambda x, w, t, s, b: tk.xnor_conv2d_bits(tk.binarize(x, t), w, s, b, channels=40, output_threshold=t),
     "output_threshold must be [37]"),
    (lambda x, w, t, s, b: tk.xnor_conv2d_bits(tk.binarize(x, t), w, s, b, channels=40,
                                               output_threshold=s, config={"BLOCK_M": 16}), "multiple of 32"),
    (lambda x, w, t, s, b: tk.bit_max_pool(tk.binarize(x, t), kernel_shape=(2, 2), pads=(2, 0, 0, 0)),
     "pads must be smaller than the kernel"),
    (lambda x, w, t, s, b: tk.bit_max_pool(x, kernel_shape=(2, 2)), "Xp must be int32"),
    (lambda x, w, t, s, b: tk.binarize(x, t[:5]), "threshold must be [40]"),
])
def test_bad_arguments_get_one_line_errors(call, message):
    with pytest.raises(tk.KernelArgumentError) as e:
        call(*_conv_inputs())
    text = str(e.value)
    assert message in text and "\n" not in text
    assert isinstance(e.value, ValueError)


def test_group_words_and_shuffle_are_fixed_by_the_layer():
    """SPLIT_WORDS (groups that start inside words) and SHUFFLE follow from the attributes: only
    grouped bit inputs with C/group % 32 != 0 split, a one-group shuffle is none; a shuffled
    bit output is ORed into a zeroed tensor. Neither can be set by config; shuffle_output is
    not an attribute of XnorConv2d v1."""
    def spec(op, c, g, shuffle=0, **kw):
        bits = op != "XnorConv2d"
        return tk.launch_spec(op, input_shape=(-(-c // 32) if bits else c, 4, 4), num_filters=4 * g,
                              kernel_shape=(1, 1), group=g, **({"channels": c, "shuffle_output": shuffle} if bits
                                                               else {}), **kw)

    assert spec("XnorConv2dBits", 40, 2).constexprs["SPLIT_WORDS"]  # 20 channels a group
    assert not spec("XnorConv2dBits", 64, 2).constexprs["SPLIT_WORDS"]
    assert not spec("XnorConv2dBits", 40, 1).constexprs["SPLIT_WORDS"]
    assert "SPLIT_WORDS" not in spec("XnorConv2d", 40, 2).constexprs
    shuffled = spec("XnorConv2dBitsBinarize", 40, 2, shuffle=1)
    assert shuffled.constexprs["SHUFFLE"] and shuffled.zeroed_output
    assert not spec("XnorConv2dBitsBinarize", 40, 1, shuffle=1).constexprs["SHUFFLE"]
    assert not spec("XnorConv2dBits", 40, 2, shuffle=1).zeroed_output  # float output: stored, not ORed
    assert "SHUFFLE" not in shuffled.config() and "SPLIT_WORDS" not in shuffled.config()
    for key in ("SPLIT_WORDS", "SHUFFLE"):
        with pytest.raises(tk.KernelArgumentError, match="unknown or fixed"):
            spec("XnorConv2dBits", 40, 2, config={key: False})
    with pytest.raises(tk.KernelArgumentError, match="shuffle_output must be 0 or 1"):
        spec("XnorConv2dBits", 40, 2, shuffle=2)
    with pytest.raises(tk.KernelArgumentError, match=r"unknown attribute\(s\) \['shuffle_output'\]"):
        tk.launch_spec("XnorConv2d", input_shape=(40, 4, 4), num_filters=4, kernel_shape=(1, 1), shuffle_output=1)


# ------------------------------------------------------------------------------ tile table


def test_kernel_config_records_the_launch():
    cfg = tk.kernel_config("XnorConv2dBits", input_shape=(6, 32, 32), num_filters=160, channels=192,
                           kernel_shape=(1, 1), config={"algo": "popcount"})
    assert cfg["kernel"] == "xnor_conv2d_bits_kernel" and cfg["num_warps"] == 4 and cfg["algo"] == "popcount"
    assert cfg["BLOCK_P"] * cfg["grid_per_image"][0] >= 32 * 32 * 160 // cfg["BLOCK_M"]
    assert cfg["BLOCK_K"] == 2  # 6 words: an even count
    bin_cfg = tk.kernel_config("XnorConv2dBitsBinarize", input_shape=(3, 16, 16), num_filters=40, channels=96,
                               kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    assert bin_cfg["algo"] == "popcount"  # 40 filters: fewer than a dot tile
    assert bin_cfg["BLOCK_M"] % 32 == 0 and bin_cfg["BLOCK_K"] == 1  # 3 words: odd
    pool = tk.kernel_config("BitMaxPool", input_shape=(3, 32, 32), kernel_shape=(3, 3), strides=(2, 2),
                            pads=(1, 1, 1, 1))
    assert pool["grid_per_image"] == [-(-256 // pool["BLOCK_P"]), 3, 1]
    binz = tk.kernel_config("Binarize", input_shape=(192, 32, 32))
    assert binz["grid_per_image"][1] == 6
    with pytest.raises(tk.KernelArgumentError, match="unknown op"):
        tk.kernel_config("Conv", input_shape=(1, 1, 1))


# nin_xnornet's binary layers: (C, H = W, M, kernel) and the dot's (tile, slots per step).
NIN = [(192, 32, 160, 1), (160, 32, 96, 1), (96, 16, 192, 3), (192, 16, 192, 1), (192, 8, 192, 3), (192, 8, 192, 1)]


def test_table_runs_nin_layers_on_tensor_cores():
    """Every nin_xnornet binary layer gets the dot (each has >= 64 filters), in tiles that
    divide its work with little padding: 64 filters x 128 pixels (64 on 8x8 images), 2 word
    slots per step for 1x1 layers (6 or 5 slots), 4 for 3x3 ones (27 or 54 slots), 1 for float
    inputs; nin_gc_xnornet's 16-group layer (32 filters per group) stays on popcount, its
    2-group one (128 filters per group) gets the dot."""
    for c, hw, m, k in NIN:
        attrs = dict(num_filters=m, kernel_shape=(k, k), pads=((k - 1) // 2,) * 4, relu=1)
        float_cfg = tk.kernel_config("XnorConv2d", input_shape=(c, hw, hw), **attrs)
        bits_cfg = tk.kernel_config("XnorConv2dBitsBinarize", input_shape=(-(-c // 32), hw, hw), channels=c, **attrs)
        for cfg in (float_cfg, bits_cfg):
            assert cfg["algo"] == "dot" and cfg["BLOCK_M"] == 64 and cfg["num_warps"] == 4 and cfg["num_stages"] == 2
            assert cfg["BLOCK_P"] == min(128, hw * hw)
            assert cfg["grid_per_image"][0] == -(-hw * hw // cfg["BLOCK_P"]) * -(-m // 64)
        assert float_cfg["BLOCK_K"] == 1
        assert bits_cfg["BLOCK_K"] == (2 if k == 1 else 4)
    grouped = tk.kernel_config("XnorConv2d", input_shape=(256, 16, 16), num_filters=512, kernel_shape=(3, 3),
                               group=16)
    assert grouped["algo"] == "popcount"
    grouped = tk.kernel_config("XnorConv2dBitsBinarize", input_shape=(8, 16, 16), channels=256, num_filters=256,
                               kernel_shape=(1, 1), group=2)
    assert grouped["algo"] == "dot" and grouped["BLOCK_K"] == 2  # 4 slots; at most 2 per step when grouped


def test_table_for_nin_gc_bit_layers():
    """nin_gc_xnornet's packed-bits layers: 32 filters a group on popcount in tiles of 32 filters
    (a tile of 64 would run two groups over all its rows, and spills on sm_90 at 128
    registers); a shuffled bit output on the dot in tiles of 64 pixels (128 spill)."""
    l3 = dict(input_shape=(8, 16, 16), channels=256, num_filters=512, kernel_shape=(3, 3), pads=(1, 1, 1, 1),
              group=16, shuffle_output=1)
    for op in ("XnorConv2dBits", "XnorConv2dBitsBinarize"):
        cfg = tk.kernel_config(op, **l3)
        assert cfg["algo"] == "popcount" and cfg["BLOCK_M"] == 32 and cfg["BLOCK_P"] == 32
    assert tk.kernel_config("XnorConv2d", input_shape=(256, 16, 16), num_filters=512, kernel_shape=(3, 3),
                            group=16)["BLOCK_M"] == 64  # float inputs: 32 filters spill on sm_80
    l1 = dict(input_shape=(8, 32, 32), channels=256, num_filters=256, kernel_shape=(1, 1), group=2)
    assert tk.kernel_config("XnorConv2dBitsBinarize", shuffle_output=1, **l1)["BLOCK_P"] == 64
    assert tk.kernel_config("XnorConv2dBitsBinarize", **l1)["BLOCK_P"] == 128
    assert tk.kernel_config("XnorConv2dBits", shuffle_output=1, **l1)["BLOCK_P"] == 128  # stores, not ORs


def test_one_entry_decides_the_algo(monkeypatch):
    """DOT_MIN_FILTERS_PER_GROUP alone moves the boundary; config={"algo": ...} overrides the
    table both ways and brings that algo's tiles with it."""
    n = tk.DOT_MIN_FILTERS_PER_GROUP
    shape = dict(input_shape=(64, 8, 8), kernel_shape=(1, 1))
    assert tk.kernel_config("XnorConv2d", num_filters=n, **shape)["algo"] == "dot"
    assert tk.kernel_config("XnorConv2d", num_filters=n - 1, **shape)["algo"] == "popcount"
    assert tk.kernel_config("XnorConv2d", num_filters=2 * n, group=2, **shape)["algo"] == "dot"
    assert tk.kernel_config("XnorConv2d", num_filters=2 * n - 2, group=2, **shape)["algo"] == "popcount"
    monkeypatch.setattr(tk, "DOT_MIN_FILTERS_PER_GROUP", 8)
    assert tk.kernel_config("XnorConv2d", num_filters=8, **shape)["algo"] == "dot"
    forced = tk.kernel_config("XnorConv2d", num_filters=8, config={"algo": "popcount"}, **shape)
    assert forced["algo"] == "popcount" and forced["num_stages"] == 1  # popcount's own tiles
    forced = tk.kernel_config("XnorConv2d", num_filters=200, config={"algo": "dot", "BLOCK_M": 128}, **shape)
    assert forced["algo"] == "dot" and forced["BLOCK_M"] == 128 and forced["num_stages"] == 2
    assert "algo" not in tk.kernel_config("Binarize", input_shape=(64, 8, 8))


def test_dot_block_k_weighs_padding_against_steps():
    assert [tk._dot_block_k(s) for s in (1, 2, 3, 5, 6, 9, 27, 54)] == [1, 2, 4, 2, 2, 2, 4, 4]


def test_interpreter_table_covers_an_image_per_program():
    spec = tk.launch_spec("XnorConv2d", input_shape=(70, 8, 8), num_filters=50, kernel_shape=(3, 3),
                          pads=(1, 1, 1, 1), interpret=True)
    assert spec.grid_per_image == (1, 1, 1) and spec.constexprs["BLOCK_K"] == 4 and spec.algo == "popcount"
    spec = tk.launch_spec("XnorConv2d", input_shape=(70, 8, 8), num_filters=50, kernel_shape=(3, 3),
                          pads=(1, 1, 1, 1), interpret=True, config={"algo": "dot"})
    assert spec.grid_per_image == (1, 1, 1) and spec.constexprs["BLOCK_K"] == 8  # of 27 slots: 4 steps


# nin_xnornet's and nin_gc_xnornet's binary layers at their real sizes: (C, H = W, M, kernel, group).
NIN_SIZES = [(192, 32, 160, 1, 1), (160, 32, 96, 1, 1), (96, 16, 192, 3, 1), (192, 16, 192, 1, 1), (192, 8, 192, 3, 1),
             (192, 8, 192, 1, 1), (256, 32, 256, 1, 2), (256, 16, 512, 3, 16), (512, 16, 512, 1, 4),
             (512, 8, 1024, 3, 32), (1024, 8, 1024, 1, 8)]


def test_interpreter_tiles_fit_real_layer_sizes():
    """The interpreter's table keeps every op within MAX_TILE_ELEMENTS at any size (CPU tensors
    of a real model run there): each op at nin_xnornet's and nin_gc_xnornet's sizes, both
    algorithms. Its tiles are the largest that fit: an ungrouped layer's program holds at least
    a quarter of the limit, or the whole layer. Binarize and BitMaxPool run at full size."""
    from xnorpipe.deploy import reference

    def check(spec):
        elements = tk._tile_elements(spec.op, spec.algo, spec.constexprs)
        assert elements <= tk.MAX_TILE_ELEMENTS, spec
        return elements

    for c, hw, m, k, g in NIN_SIZES:
        attrs = dict(num_filters=m, kernel_shape=(k, k), pads=((k - 1) // 2,) * 4, group=g, relu=1, interpret=True)
        for algo in tk.ALGOS:
            for op in tk.CONV_OPS:
                bits = {} if op == "XnorConv2d" else {"channels": c, "shuffle_output": int(g > 1)}
                spec = tk.launch_spec(op, input_shape=(-(-c // 32) if bits else c, hw, hw), config={"algo": algo},
                                      **bits, **attrs)
                elements = check(spec)
                whole = spec.grid_per_image == (1, 1, 1) and spec.constexprs["BLOCK_K"] >= (
                    k * k * -(-c // 32) if algo == "dot" else -(-c // 32))
                assert g > 1 or whole or elements >= tk.MAX_TILE_ELEMENTS // 4, spec
        check(tk.launch_spec("Binarize", input_shape=(c, hw, hw), interpret=True))
        check(tk.launch_spec("BitMaxPool", input_shape=(-(-c // 32), hw, hw), kernel_shape=(3, 3), strides=(2, 2),
                             pads=(1, 1, 1, 1), interpret=True))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 192, 32, 32)).astype(np.float32)
    t = rng.standard_normal(192).astype(np.float32)
    bits = tk.binarize(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert np.array_equal(bits, reference.binarize_bits(x, t))
    pooled = tk.bit_max_pool(torch.from_numpy(bits), kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)).numpy()
    assert np.array_equal(pooled, reference.bit_max_pool(bits, (3, 3), (2, 2), (1, 1, 1, 1)))


def test_both_kernel_kinds_live_in_one_process():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    interp, compiled = tk.kernels(True), tk.kernels(False)
    for name in tk.KERNEL_NAMES.values():
        assert isinstance(getattr(interp, name), InterpretedFunction)
        assert isinstance(getattr(compiled, name), JITFunction)
    assert tk.kernels(True) is interp  # built once
    assert tk.interpreted("cpu")
    assert tk.interpreted("cuda") == bool(triton.knobs.runtime.interpret)  # Triton's own switch


def test_kernel_signatures_follow_the_launch_description():
    """Pointers of the op's inputs, the int32 scalars of LaunchSpec, the output pointer, then
    constexprs: TensorRT's AOT argument order."""
    mod = tk.kernels(False)
    shapes = {"XnorConv2d": dict(input_shape=(40, 5, 5), num_filters=8, kernel_shape=(3, 3)),
              "XnorConv2dBits": dict(input_shape=(2, 5, 5), num_filters=8, channels=40, kernel_shape=(3, 3)),
              "XnorConv2dBitsBinarize": dict(input_shape=(2, 5, 5), num_filters=8, channels=40, kernel_shape=(3, 3)),
              "BitMaxPool": dict(input_shape=(2, 5, 5), kernel_shape=(2, 2)),
              "Binarize": dict(input_shape=(40, 5, 5))}
    for op, kw in shapes.items():
        spec = tk.launch_spec(op, **kw)
        fn = getattr(mod, spec.kernel)
        runtime = [p.name for p in fn.params if not p.is_constexpr]
        constexprs = [p.name for p in fn.params if p.is_constexpr]
        n_in = len(spec.pointer_types) - 1
        assert runtime[n_in:n_in + len(spec.scalars)] == list(spec.scalar_names), op
        assert len(runtime) == n_in + len(spec.scalars) + 1, op
        assert all(name.endswith("_ptr") for name in runtime[:n_in] + runtime[-1:]), op
        assert set(constexprs) == set(spec.constexprs), op
        assert [p.name for p in fn.params][-len(constexprs):] == constexprs, op


def test_warmup_compiles_what_a_launch_would(monkeypatch):
    """triton_kernels.warmup (the GPU session compiles ahead in worker processes with it) passes
    Triton's JIT a launch's arguments: dtypes where the tensors go, the same int32 scalars,
    constexprs and compile options, so the compiled kernel lands under the key a launch looks up."""
    import contextlib
    import types

    calls = []

    class Kernel:
        def warmup(self, *args, **kwargs):
            calls.append((args, kwargs))

    fake = types.SimpleNamespace(**{name: Kernel() for name in tk.KERNEL_NAMES.values()})
    monkeypatch.setattr(tk, "kernels", lambda interpret: fake if not interpret else None)
    monkeypatch.setattr(tk.torch.cuda, "device", lambda device: contextlib.nullcontext())
    spec = tk.launch_spec("XnorConv2dBitsBinarize", input_shape=(2, 5, 5), num_filters=64, channels=40,
                          kernel_shape=(3, 3), group=2, shuffle_output=1)
    tk.warmup(spec, "cuda:0")
    (args, kwargs), = calls
    assert args == (torch.int32, torch.int32, torch.float32, torch.float32, torch.float32, *spec.scalars, torch.int32)
    assert kwargs == {"grid": (1, 1, 1), **spec.constexprs, "num_warps": spec.num_warps,
                      "num_stages": spec.num_stages, **tk.COMPILE_OPTIONS}
    assert kwargs["SPLIT_WORDS"] and kwargs["SHUFFLE"] and kwargs["enable_fp_fusion"] is False


def test_case_launch_spec_is_the_wrappers_launch(cases, layers, monkeypatch):
    """kernel_cases.case_launch_spec (what the GPU session compiles ahead) describes the launch
    the wrapper makes for the case, every op and both algorithms."""
    launched = []
    monkeypatch.setattr(tk, "_launch", lambda spec, batch, device, inputs: launched.append(spec))
    picked = {}
    for case in layers[-6:] + cases:
        picked.setdefault((case.op, case.attrs.get("group", 1) > 1, bool(case.attrs.get("shuffle_output"))), case)
    assert len(picked) >= 9
    for case in picked.values():
        for algo in tk.ALGOS:
            launched.clear()
            kc.kernel_output(case, "cpu", algo=algo)
            assert launched == [kc.case_launch_spec(case, interpret=True, algo=algo)], case.describe()
