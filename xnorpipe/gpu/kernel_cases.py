"""Random cases of the Triton kernels' ops and their bit-exact check against
`xnorpipe.deploy.reference`: the same cases run in Triton's interpreter on the CPU (CI,
tests/test_triton_kernels.py) and on a real GPU (the GPU session script).

    from xnorpipe.gpu.kernel_cases import random_cases, run_case
    for case in random_cases(300, seed=0):
        for algo in ("popcount", "dot"):  # the convolutions' two algorithms; other ops ignore it
            ok, detail = run_case(case, "cuda", algo=algo)

Cases cover what the contract leaves to the kernels: C and M not multiples of 32, groups
(bit inputs too, with C/group not a multiple of 32: groups that start inside a word and
straddle two), shuffle_output, strides and dilations 2, pads up to kernel - 1, batch 1 and 5, NaN and +-inf inputs,
thresholds exactly at input values (and at output values for XnorConv2dBitsBinarize), +-inf
and NaN thresholds, garbage in the pad bits that the contract says are ignored, infinite
scales (NaN outputs) and -0.0 biases. Shapes stay small: the interpreter runs NumPy per
program. Float outputs are compared bit for bit, any NaN matching any NaN (a CPU's default
NaN and a GPU's differ in sign and payload).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xnorpipe.deploy.onnx.ops import CONV_OPS  # the XnorConv2d family: the ops with two algorithms
from xnorpipe.deploy.packing import num_words

OP_WEIGHTS = {"XnorConv2d": 0.26, "XnorConv2dBits": 0.22, "XnorConv2dBitsBinarize": 0.22, "BitMaxPool": 0.14,
              "Binarize": 0.16}


@dataclass
class Case:
    """One call of an op: its inputs (NumPy, in ONNX input order) and attributes."""

    op: str
    inputs: dict[str, np.ndarray]
    attrs: dict = field(default_factory=dict)
    seed: tuple[int, int] = (0, 0)  # (seed, index): random_cases(index + 1, seed)[index] rebuilds it

    def describe(self) -> str:
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in self.inputs.items())
        attrs = ", ".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.op}({shapes}; {attrs}) seed={self.seed}"


# ---------------------------------------------------------------------------- generation


def _special_floats(rng: np.random.Generator, shape, p_special: float = 0.06) -> np.ndarray:
    """Normal floats with NaN, +-inf and +-0.0 sprinkled in."""
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(rng.choice([0.5, 1.0, 3.0]))
    r = rng.random(shape)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=np.float32)
    pick = rng.integers(0, len(specials), shape)
    return np.where(r < p_special, specials[pick], x).astype(np.float32)


def _thresholds(rng: np.random.Generator, x: np.ndarray, axis_len: int) -> np.ndarray:
    """Per-channel thresholds over channel axis 1 of x: many exactly at a value x holds in that
    channel (the x >= t boundary), some random, some +-inf, rarely NaN."""
    t = rng.standard_normal(axis_len).astype(np.float32)
    flat = np.moveaxis(x, 1, 0).reshape(axis_len, -1)
    for c in range(axis_len):
        r = rng.random()
        if r < 0.45 and flat.shape[1]:
            t[c] = flat[c, rng.integers(0, flat.shape[1])]
        elif r < 0.52:
            t[c] = np.inf
        elif r < 0.59:
            t[c] = -np.inf
        elif r < 0.62:
            t[c] = np.nan
        elif r < 0.66:
            t[c] = -0.0
    return t


def _random_words(rng: np.random.Generator, shape, channels: int, garbage: bool, axis: int) -> np.ndarray:
    """int32 bit words; bits past `channels` along `axis` (the word axis) are random when
    `garbage` (the contract: ignored when read), else 0 (as written)."""
    words = rng.integers(-(2**31), 2**31, size=shape, dtype=np.int64).astype(np.int32)
    rem = channels % 32
    if rem and not garbage:
        last = [slice(None)] * len(shape)
        last[axis] = shape[axis] - 1
        words[tuple(last)] &= np.int32((1 << rem) - 1)
    return words


def _conv_geometry(rng: np.random.Generator) -> dict:
    """kernel_shape, strides, dilations, pads (each pad <= kernel - 1), and an input size with
    at least one output pixel."""
    kinds = [(1, 1)] * 8 + [(3, 3)] * 6 + [(2, 2)] * 2 + [(1, 3), (3, 1), (2, 3), (5, 5)]
    kh, kw = kinds[rng.integers(0, len(kinds))]
    strides = tuple(int(v) for v in rng.choice([1, 1, 2], 2))
    dilations = tuple(int(v) for v in rng.choice([1, 1, 1, 2], 2))
    pads = (int(rng.integers(0, kh)), int(rng.integers(0, kw)), int(rng.integers(0, kh)), int(rng.integers(0, kw)))
    hw = []
    for k, d, p0, p1 in ((kh, dilations[0], pads[0], pads[2]), (kw, dilations[1], pads[1], pads[3])):
        lo = max(1, (k - 1) * d + 1 - p0 - p1)
        hw.append(int(rng.integers(lo, max(lo, 8) + 1)))
    return {"kernel_shape": (kh, kw), "strides": strides, "dilations": dilations, "pads": pads, "hw": tuple(hw)}


def _batch(rng: np.random.Generator) -> int:
    return int(rng.choice([1, 2, 5], p=[0.6, 0.15, 0.25]))


def _scale_bias(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    scale = rng.standard_normal(m).astype(np.float32) * np.float32(0.1)
    bias = rng.standard_normal(m).astype(np.float32)
    scale[rng.random(m) < 0.05] = 0.0
    bias[rng.random(m) < 0.05] = -0.0
    if rng.random() < 0.1:  # inf * 0 = NaN where a sum is 0, +-inf elsewhere
        scale[rng.integers(0, m)] = np.float32(rng.choice([np.inf, -np.inf]))
    return scale, bias


# Interpreter work of a conv case, in (image, group, tap) steps of NumPy ops: cases above it are
# redrawn, so that the interpreter tests stay within CI's time (about 0.02 s per step).
MAX_CONV_STEPS = 36


def _conv_case(rng: np.random.Generator, op: str) -> Case:
    bits_in = op != "XnorConv2d"
    for _ in range(100):
        geo = _conv_geometry(rng)
        n = _batch(rng)
        group = int(rng.choice([1, 1, 1, 2, 3, 4]))
        kh, kw = geo["kernel_shape"]
        if n * group * kh * kw <= MAX_CONV_STEPS:
            break
    shuffle = False
    if bits_in and group > 1:  # whole-word groups, groups inside words, groups across word boundaries
        cg = int(rng.choice([16, 24, 32, 40, 64, int(rng.integers(1, 80))]))
        shuffle = bool(rng.random() < 0.4)
    else:
        cg = int(rng.choice([int(rng.integers(1, 80)), 32, 64, int(rng.integers(33, 100))], p=[0.6, 0.1, 0.1, 0.2]))
    mg = int(rng.integers(1, 41)) if rng.random() < 0.8 else int(rng.integers(41, 80))
    c, m = cg * group, mg * group
    h, w = geo["hw"]
    attrs = {k: geo[k] for k in ("strides", "pads", "dilations")}  # kernel_shape: W's
    attrs.update(group=group, relu=bool(rng.random() < 0.5))
    if shuffle:
        attrs["shuffle_output"] = True
    wts = _random_words(rng, (m, kh, kw, num_words(cg)), cg, garbage=rng.random() < 0.5, axis=3)
    scale, bias = _scale_bias(rng, m)
    if not bits_in:
        x = _special_floats(rng, (n, c, h, w))
        return Case(op, {"X": x, "W": wts, "threshold": _thresholds(rng, x, c), "scale": scale, "bias": bias}, attrs)
    xp = _random_words(rng, (n, num_words(c), h, w), c, garbage=rng.random() < 0.5, axis=1)
    inputs = {"Xp": xp, "W": wts, "scale": scale, "bias": bias}
    attrs["channels"] = c
    if op == "XnorConv2dBitsBinarize":
        from xnorpipe.deploy import reference

        conv = {k: v for k, v in attrs.items() if k != "channels"}
        y = reference.xnor_conv2d_bits(xp, c, wts, scale, bias, **conv)
        inputs["output_threshold"] = _thresholds(rng, y, m)
    return Case(op, inputs, attrs)


def _pool_case(rng: np.random.Generator) -> Case:
    kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    strides = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    pads = (int(rng.integers(0, kh)), int(rng.integers(0, kw)), int(rng.integers(0, kh)), int(rng.integers(0, kw)))
    h = int(rng.integers(max(1, kh - pads[0] - pads[2]), 11))
    w = int(rng.integers(max(1, kw - pads[1] - pads[3]), 11))
    words = int(rng.integers(1, 6))
    xp = rng.integers(-(2**31), 2**31, size=(_batch(rng), words, h, w), dtype=np.int64).astype(np.int32)
    return Case("BitMaxPool", {"Xp": xp}, {"kernel_shape": (kh, kw), "strides": strides, "pads": pads})


def _binarize_case(rng: np.random.Generator) -> Case:
    c = int(rng.choice([int(rng.integers(1, 100)), 32, 64, int(rng.integers(100, 200))], p=[0.7, 0.1, 0.1, 0.1]))
    x = _special_floats(rng, (_batch(rng), c, int(rng.integers(1, 9)), int(rng.integers(1, 9))), p_special=0.1)
    return Case("Binarize", {"X": x, "threshold": _thresholds(rng, x, c)})


def make_case(op: str, rng: np.random.Generator) -> Case:
    if op == "BitMaxPool":
        return _pool_case(rng)
    if op == "Binarize":
        return _binarize_case(rng)
    return _conv_case(rng, op)


def random_cases(count: int, seed: int = 0) -> list[Case]:
    """`count` reproducible cases over all five ops (in OP_WEIGHTS proportions, each op at
    least once when count >= 5); case i depends only on (seed, i)."""
    ops = list(OP_WEIGHTS)
    weights = np.array([OP_WEIGHTS[o] for o in ops])
    cases = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        op = ops[i] if i < len(ops) else ops[int(rng.choice(len(ops), p=weights / weights.sum()))]
        case = make_case(op, rng)
        case.seed = (seed, i)
        cases.append(case)
    return cases


def layer_cases(spatial: int = 3, batch: int = 1, seed: int = 1) -> list[Case]:
    """nin_xnornet's binary layers (channels, filters, kernels and pads) and three of
    nin_gc_xnornet's grouped ones (16 channels a group in one of them: two groups to a word), at
    a small spatial size, in every conv form they can take (the grouped bit forms with
    shuffle_output, as nin_gc_xnornet's packed-bits export has them)."""
    layers = [  # (C, M, k, pad, group)
        (192, 160, 1, 0, 1), (160, 96, 1, 0, 1), (96, 192, 3, 1, 1), (192, 192, 1, 0, 1), (192, 192, 3, 1, 1),
        (256, 256, 1, 0, 2), (256, 512, 3, 1, 16), (512, 512, 1, 0, 4)]
    cases = []
    for i, (c, m, k, pad, group) in enumerate(layers):
        rng = np.random.default_rng([seed, i])
        cg = c // group
        attrs = {"strides": (1, 1), "pads": (pad,) * 4, "dilations": (1, 1), "group": group, "relu": True}
        wts = _random_words(rng, (m, k, k, num_words(cg)), cg, garbage=False, axis=3)
        scale, bias = _scale_bias(rng, m)
        x = _special_floats(rng, (batch, c, spatial, spatial), p_special=0.01)
        cases.append(Case("XnorConv2d", {"X": x, "W": wts, "threshold": _thresholds(rng, x, c), "scale": scale,
                                         "bias": bias}, dict(attrs), (seed, i)))
        from xnorpipe.deploy import reference

        xp = reference.binarize_bits(x, _thresholds(rng, x, c))
        bits_attrs = dict(attrs, channels=c)
        if group > 1:
            bits_attrs["shuffle_output"] = True
        cases.append(Case("XnorConv2dBits", {"Xp": xp, "W": wts, "scale": scale, "bias": bias}, bits_attrs, (seed, i)))
        y = reference.xnor_conv2d_bits(xp, c, wts, scale, bias, **{k: v for k, v in bits_attrs.items()
                                                                    if k != "channels"})
        cases.append(Case("XnorConv2dBitsBinarize", {"Xp": xp, "W": wts, "scale": scale, "bias": bias,
                                                     "output_threshold": _thresholds(rng, y, m)}, bits_attrs,
                          (seed, i)))
    return cases


# ------------------------------------------------------------------------------ checking


def reference_output(case: Case) -> np.ndarray:
    """What `xnorpipe.deploy.reference` computes for the case."""
    import torch

    from xnorpipe.deploy import reference

    i, a = case.inputs, dict(case.attrs)
    if case.op == "XnorConv2d":
        return reference.xnor_conv2d(torch.from_numpy(i["X"]), i["W"], torch.from_numpy(i["threshold"]),
                                     torch.from_numpy(i["scale"]), torch.from_numpy(i["bias"]), **a).numpy()
    if case.op in ("XnorConv2dBits", "XnorConv2dBitsBinarize"):
        channels = a.pop("channels")
        return reference.xnor_conv2d_bits(i["Xp"], channels, i["W"], i["scale"], i["bias"],
                                          output_threshold=i.get("output_threshold"), **a)
    if case.op == "BitMaxPool":
        return reference.bit_max_pool(i["Xp"], a["kernel_shape"], a["strides"], a["pads"])
    if case.op == "Binarize":
        return reference.binarize_bits(i["X"], i["threshold"])
    raise ValueError(f"unknown op {case.op!r}")


def kernel_output(case: Case, device="cpu", config: dict | None = None, *, algo: str | None = None):
    """The Triton wrapper's output for the case, on `device` (a torch tensor there). `algo`
    ("popcount" or "dot") picks a convolution's algorithm over the tile table's choice (as
    config["algo"] does); the other ops have one algorithm and ignore it."""
    import torch

    from xnorpipe.gpu import triton_kernels as tk

    if algo is not None and case.op in tk.CONV_OPS:
        config = {**(config or {}), "algo": algo}
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in case.inputs.items()}
    a = case.attrs
    if case.op == "XnorConv2d":
        return tk.xnor_conv2d(t["X"], t["W"], t["threshold"], t["scale"], t["bias"], config=config, **a)
    if case.op in ("XnorConv2dBits", "XnorConv2dBitsBinarize"):
        return tk.xnor_conv2d_bits(t["Xp"], t["W"], t["scale"], t["bias"], output_threshold=t.get("output_threshold"),
                                   config=config, **a)
    if case.op == "BitMaxPool":
        return tk.bit_max_pool(t["Xp"], config=config, **a)
    if case.op == "Binarize":
        return tk.binarize(t["X"], t["threshold"], config=config)
    raise ValueError(f"unknown op {case.op!r}")


def case_launch_spec(case: Case, *, interpret: bool, config: dict | None = None, algo: str | None = None):
    """The triton_kernels.LaunchSpec of the wrapper's launch for the case (interpret: the
    interpreter's table or the GPU's): what the GPU session compiles ahead of its checks."""
    from xnorpipe.gpu import triton_kernels as tk

    if algo is not None and case.op in tk.CONV_OPS:
        config = {**(config or {}), "algo": algo}
    i, a = case.inputs, case.attrs
    if case.op in tk.CONV_OPS:
        m, kh, kw, _ = i["W"].shape
        x = i["X"] if case.op == "XnorConv2d" else i["Xp"]
        return tk.launch_spec(case.op, input_shape=x.shape[1:], num_filters=m, kernel_shape=(kh, kw), config=config,
                              interpret=interpret, **a)
    x = i["Xp"] if case.op == "BitMaxPool" else i["X"]
    return tk.launch_spec(case.op, input_shape=x.shape[1:], config=config, interpret=interpret, **a)


def compare(got: np.ndarray, want: np.ndarray) -> tuple[bool, str]:
    """Bit-exact comparison; for float32 any NaN matches any NaN. ("", True) or a one-line
    description of the first mismatch."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False, f"got {got.dtype} {list(got.shape)}, expected {want.dtype} {list(want.shape)}"
    if got.dtype == np.float32:
        same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    else:
        same = got == want
    if same.all():
        return True, ""
    bad = np.argwhere(~same)
    idx = tuple(int(v) for v in bad[0])

    def fmt(v) -> str:
        if got.dtype == np.float32:
            return f"{v!r} (0x{np.float32(v).view(np.uint32):08x})"
        return f"0x{np.int32(v).view(np.uint32):08x}"

    return False, (f"{len(bad)} of {same.size} differ; first at {list(idx)}: got {fmt(got[idx])}, "
                   f"expected {fmt(want[idx])}")


def run_case(case: Case, device="cpu", config: dict | None = None, *, algo: str | None = None) -> tuple[bool, str]:
    """Run the case through the Triton wrapper on `device` and the reference; (ok, detail).
    `algo`: as in `kernel_output` (named in the detail when given)."""
    where = case.describe() + (f" algo={algo}" if algo is not None and case.op in CONV_OPS else "")
    try:
        got = kernel_output(case, device, config, algo=algo).cpu().numpy()
    except Exception as e:  # a kernel that raises fails its case, with the reason
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return False, f"{where}: raised {type(e).__name__}: {msg}"
    ok, detail = compare(got, reference_output(case))
    return ok, "" if ok else f"{where}: {detail}"
