"""Fold a trained binary model (eval mode) into the deploy IR (docs/XNORCONV2D.md), by tracing it.

Binary blocks `relu(conv(sign(bn(x)), alpha * sign(w)) + b)` become `BinaryConv` layers:
a per-input-channel threshold, packed sign bits, per-filter scale alpha and bias b.

The threshold is not the textbook `mu - beta * sqrt(var + eps) / gamma`: PyTorch evaluates
bn(x) in float32 and a bit decided there can differ from `x >= tau` for inputs within a few
ulps of tau. bn(x) in float32 is monotone in x (each rounding step is), so the exact decision
boundary is a single float32 that we find by bisection over the float32 line, evaluating the
model's own BatchNorm. `x >= threshold` then reproduces sign(bn(x)) for every finite x.

Folding is pure: it reads a model (xnorpipe.sources loads checkpoints and random inits) and
refuses non-finite weights or BatchNorm statistics, on which the forms may disagree.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from xnorpipe.deploy import ir
from xnorpipe.deploy.packing import pack_weights, unpack_weights
from xnorpipe.errors import XnorpipeError
from xnorpipe.nn import BinaryActivation, BinaryConv2d, ChannelShuffle

# Evaluate candidates in blocks of this many pixels so BatchNorm takes the same vectorised
# CPU path as in a real layer (a 1x1 map could take a scalar tail with different rounding).
_PROBE_PIXELS = 64


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pads(padding) -> tuple[int, int, int, int]:
    if isinstance(padding, str):
        raise XnorpipeError(f"cannot fold conv padding={padding!r}; use explicit integers")
    ph, pw = _pair(padding)
    return (ph, pw, ph, pw)


def _float_keys_to_values(keys: np.ndarray) -> np.ndarray:
    """Inverse of _float_keys: ordered int64 keys -> float32 values."""
    keys = keys.astype(np.int64)
    bits = np.where(keys >= 0, keys, (-keys - 1) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def _float_keys(values: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys whose order is the float order (-0.0 sorts just below +0.0)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.int64)
    negative = bits >= 0x80000000
    return np.where(negative, -(bits & 0x7FFFFFFF) - 1, bits)


def _bn_sign_positive(bn: nn.BatchNorm2d, x: np.ndarray) -> np.ndarray:
    """sign(bn(x)) == +1 for one candidate value per channel, as the trained model computes it."""
    c = x.shape[0]
    probe = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    probe = probe.view(1, c, 1, 1).expand(1, c, 1, _PROBE_PIXELS).contiguous()
    with torch.no_grad():
        y = F.batch_norm(probe, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                         False, 0.0, bn.eps)
    return (y >= 0).all(dim=(0, 2, 3)).numpy()


def _smallest_true(predicate, lo_keys: np.ndarray, hi_keys: np.ndarray) -> np.ndarray:
    """Per channel, the smallest float32 in [lo, hi] where a monotone predicate turns true.

    predicate(lo) must be False and predicate(hi) True (checked by the caller).
    """
    lo, hi = lo_keys.copy(), hi_keys.copy()
    while np.any(hi - lo > 1):
        mid = lo + (hi - lo) // 2
        ok = predicate(_float_keys_to_values(mid))
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    return _float_keys_to_values(hi)


def bn_thresholds(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Per input channel: threshold and whether the channel's weights must be inverted.

    gamma > 0: sign(bn(x)) = +1 iff x >= threshold (smallest x with bn(x) >= 0).
    gamma < 0: bn is decreasing, sign = +1 iff x <= t. We invert that channel's weight bits
      and binarize with bit = (x >= threshold), threshold = smallest x with bn(x) < 0, so
      bit = NOT sign exactly, also at equality (x == t gives bn >= 0, original +1, bit -1).
    gamma == 0: bn is the constant beta: threshold -inf (always +1) if beta >= 0, else +inf.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise XnorpipeError("cannot fold a BatchNorm without running statistics")
    gamma = (bn.weight.detach() if bn.weight is not None else torch.ones(bn.num_features)).float().numpy()
    beta = (bn.bias.detach() if bn.bias is not None else torch.zeros(bn.num_features)).float().numpy()
    c = gamma.shape[0]
    invert = gamma < 0
    flat = gamma == 0

    def bit(x: np.ndarray) -> np.ndarray:
        positive = _bn_sign_positive(bn, x)
        return np.where(invert, ~positive, positive)

    lo = np.full(c, _float_keys(np.float32(-np.inf)), dtype=np.int64)
    hi = np.full(c, _float_keys(np.float32(np.inf)), dtype=np.int64)
    # Search the finite floats only: bn(+-inf) may be NaN.
    lo_vals = _float_keys_to_values(lo + 1)
    hi_vals = _float_keys_to_values(hi - 1)
    bit_lo, bit_hi = bit(lo_vals), bit(hi_vals)
    threshold = np.empty(c, dtype=np.float32)
    # Channels whose bit is constant over all finite floats (saturation): -inf or +inf.
    always = bit_lo & ~flat
    never = ~bit_hi & ~flat
    search = ~flat & ~always & ~never
    if np.any(search):
        found = _smallest_true(bit, lo + 1, hi - 1)
        threshold[search] = found[search]
    threshold[always] = -np.inf
    threshold[never] = np.inf
    threshold[flat] = np.where(beta[flat] >= 0, -np.inf, np.inf)
    invert[flat] = False
    return threshold.astype(np.float32), invert


# ------------------------------------------------------------------------------ conv folds


def _float_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> ir.FloatConv:
    """A float Conv2d, with the BatchNorm after it (when given) folded into weight and bias."""
    with torch.no_grad():
        w = conv.weight.detach()
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
        if bn is None:
            weight, bias = w.float().numpy().copy(), b.float().numpy().copy()
        else:
            w, b = w.double(), b.double()
            gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
            beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
            k = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
            weight = (w * k.view(-1, 1, 1, 1)).float().numpy()
            bias = ((b - bn.running_mean.double()) * k + beta).float().numpy()
    return ir.FloatConv(weight=weight, bias=bias, strides=_pair(conv.stride), pads=_pads(conv.padding),
                        dilations=_pair(conv.dilation), group=conv.groups)


def _binary_conv(conv: BinaryConv2d, threshold: np.ndarray, invert: np.ndarray,
                 bn: nn.BatchNorm2d | None) -> ir.BinaryConv:
    """A BinaryConv2d reading sign(x) as `x >= threshold` (channels in `invert` read NOT sign),
    with the BatchNorm after it (when given) folded into its scale and bias."""
    with torch.no_grad():
        wb = conv.binary_weight().detach().float()  # alpha_m * sign, sign(0) = +1
    m, cg = wb.shape[:2]
    positive = (wb >= 0).numpy()
    # alpha is |wb| of any tap; taking the max is robust to a filter whose alpha is 0.
    scale = wb.abs().reshape(m, -1).amax(dim=1).numpy().astype(np.float32)
    # Invert the bits of inverted input channels: group-local channel j of filter m belongs
    # to global input channel g*cg + j, g = m // (M / group).
    group = conv.groups
    per_group = m // group
    global_channel = (np.arange(m)[:, None] // per_group) * cg + np.arange(cg)[None, :]
    flip = invert[global_channel]  # [M, cg]
    positive = positive ^ flip[:, :, None, None]
    bias = (conv.bias.detach().float().numpy() if conv.bias is not None
            else np.zeros(m, dtype=np.float32)).astype(np.float32)
    if bn is not None:  # bn(scale * s + bias) = (k * scale) * s + (bias - mean) * k + beta
        with torch.no_grad():
            gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(m, dtype=torch.float64)
            beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(m, dtype=torch.float64)
            k = (gamma / torch.sqrt(bn.running_var.double() + bn.eps)).numpy()
            mean = bn.running_mean.double().numpy()
        scale = (scale.astype(np.float64) * k).astype(np.float32)
        bias = ((bias.astype(np.float64) - mean) * k + beta.numpy()).astype(np.float32)
    return ir.BinaryConv(weight_bits=pack_weights(positive), threshold=threshold, scale=scale,
                         bias=bias, kernel_shape=_pair(conv.kernel_size),
                         strides=_pair(conv.stride), pads=_pads(conv.padding),
                         dilations=_pair(conv.dilation), group=group)


# --------------------------------------------------------------------------------- tracing

SUPPORTED = ("Conv2d [-> BatchNorm2d], [BatchNorm2d ->] BinaryActivation -> BinaryConv2d [-> BatchNorm2d], "
             "ReLU, PReLU, Hardtanh, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1) or mean((2, 3)), + (residual), "
             "torch.cat on channels, ChannelShuffle (or view -> transpose -> reshape), flatten, Linear, "
             "Dropout, Identity")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _Tracer(fx.Tracer):
    """Keeps xnorpipe's layers whole (torch.nn's own layers are leaves already)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (BinaryActivation, BinaryConv2d, ChannelShuffle)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> fx.GraphModule:
    """`model` as a torch.fx graph whose tensor nodes know their shapes (run on a batch of 2
    zero images of `input_shape`, in eval mode)."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, ... on data-dependent Python
        raise XnorpipeError(f"cannot trace {type(model).__name__} with torch.fx: {_first_line(e)} "
                            "(forward must not branch on tensor values)") from None
    gm = fx.GraphModule(model, graph)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(2, *input_shape))
    except Exception as e:
        raise XnorpipeError(f"{type(model).__name__} fails on a {tuple(input_shape)} input: {_first_line(e)}") from None
    finally:
        model.train(was_training)
    return gm


def _shape(n: fx.Node) -> tuple[int, ...] | None:
    meta = n.meta.get("tensor_meta")
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


_ADD = {operator.add, operator.iadd, torch.add}
_CAT = {torch.cat, torch.concat}
_RELU = {F.relu, torch.relu}
_ALIAS_FUNCTIONS = {F.dropout, F.dropout2d}
_MODULE_KINDS = [  # subclasses first
    (BinaryConv2d, "bconv"), (nn.Conv2d, "conv"), (nn.BatchNorm2d, "bn"), (BinaryActivation, "sign"),
    (nn.ReLU, "relu"), (nn.PReLU, "prelu"), (nn.Hardtanh, "clip"), (nn.MaxPool2d, "maxpool"),
    (nn.AvgPool2d, "avgpool"), (nn.AdaptiveAvgPool2d, "gap"), (ChannelShuffle, "shuffle"),
    (nn.Flatten, "flatten"), (nn.Linear, "linear"), ((nn.Dropout, nn.Dropout2d, nn.Identity), "alias"),
]


class _Folder:
    """One pass over a traced model's nodes, writing deploy IR nodes."""

    def __init__(self, gm: fx.GraphModule, problems: list[str]):
        self.gm, self.problems = gm, problems
        self.nodes: list[ir.Node] = []
        self.value: dict[fx.Node, str] = {}  # fx tensor node -> IR tensor
        self.done: set[fx.Node] = set()  # nodes folded into an earlier one
        self.shuffles: dict[fx.Node, tuple[fx.Node, int]] = {}  # last node of a shuffle pattern -> (input, groups)
        self.thresholds: dict[nn.Module, tuple[np.ndarray, np.ndarray]] = {}

    def path(self, n: fx.Node) -> str:
        return str(n.target) if n.op == "call_module" else n.name

    def module(self, n: fx.Node) -> nn.Module:
        return self.gm.get_submodule(n.target)

    def kind(self, n: fx.Node) -> str | None:
        if n.op == "placeholder":
            return "input"
        if n.op == "call_module":
            m = self.module(n)
            return next((k for cls, k in _MODULE_KINDS if isinstance(m, cls)), None)
        if n.op == "call_function":
            f = n.target
            return ("add" if f in _ADD else "cat" if f in _CAT else "relu" if f in _RELU
                    else "clip" if f is F.hardtanh else "flatten" if f is torch.flatten
                    else "gap" if f is F.adaptive_avg_pool2d else "mean" if f is torch.mean
                    else "alias" if f in _ALIAS_FUNCTIONS else None)
        if n.op == "call_method":
            return {"add": "add", "add_": "add", "relu": "relu", "relu_": "relu", "flatten": "flatten",
                    "view": "reshape", "reshape": "reshape", "contiguous": "alias", "mean": "mean"}.get(n.target)
        return None

    def unsupported(self, n: fx.Node, what: str | None = None) -> XnorpipeError:
        op = what or (type(self.module(n)).__name__ if n.op == "call_module"
                      else getattr(n.target, "__name__", str(n.target)))
        return XnorpipeError(f"cannot fold {self.path(n)} ({op}): supported are {SUPPORTED}")

    def tensor_args(self, n: fx.Node) -> list[fx.Node]:
        return [a for a in n.all_input_nodes if _shape(a) is not None]

    def emit(self, op, inputs: list[fx.Node], n: fx.Node, out: fx.Node | None = None) -> None:
        out = out or n
        self.nodes.append(ir.Node(op, tuple(self.value[a] for a in inputs), out.name, self.path(n)))
        self.value[out] = out.name

    # -- BatchNorm placement
    def feeds_signs_only(self, bn: fx.Node) -> bool:
        return bool(bn.users) and all(self.kind(u) == "sign" for u in bn.users)

    def bn_after(self, conv: fx.Node) -> fx.Node | None:
        """The BatchNorm right after `conv` to fold into it: `conv` feeds it alone, and it does not
        (only) feed signs, whose thresholds fold it exactly."""
        users = list(conv.users)
        if len(users) == 1 and self.kind(users[0]) == "bn" and not self.feeds_signs_only(users[0]):
            return users[0]
        return None

    def threshold_of(self, sign: fx.Node) -> tuple[fx.Node, np.ndarray, np.ndarray]:
        """(the tensor a sign binarizes, threshold, inverted channels): a BatchNorm before it
        that feeds only signs folds into the threshold (bisected, exact); else threshold 0."""
        (x,) = self.tensor_args(sign)
        if self.kind(x) == "bn" and self.feeds_signs_only(x):
            bn = self.module(x)
            if bn not in self.thresholds:
                self.thresholds[bn] = bn_thresholds(bn)
            return self.tensor_args(x)[0], *self.thresholds[bn]
        c = _shape(x)[1]
        return x, np.zeros(c, dtype=np.float32), np.zeros(c, dtype=bool)

    # -- view/transpose/reshape
    def reshape(self, n: fx.Node) -> None:
        (x,) = self.tensor_args(n)
        src, dst = _shape(x), _shape(n)
        if dst == src:
            self.value[n] = self.value[x]
        elif len(src) == 4 and len(dst) == 2 and dst[0] == src[0]:
            self.emit(ir.Flatten(), [x], n)
        elif len(src) == 4 and len(dst) == 5 and (dst[0], dst[1] * dst[2], *dst[3:]) == src:
            self.match_shuffle(n, x, dst[1])
        else:
            raise self.unsupported(n, f"{n.target} {src[1:]} -> {dst[1:]}")

    def match_shuffle(self, split: fx.Node, x: fx.Node, groups: int) -> None:
        """view(B, g, C/g, H, W) -> transpose(1, 2) [-> contiguous] -> view/reshape(B, C, H, W)."""
        chain, n = [], split
        while len(n.users) == 1:
            n = next(iter(n.users))
            chain.append(n)
            if self.kind(n) != "alias":
                break
        transpose = chain[-1] if chain else None
        order = None
        if transpose is not None and transpose.op == "call_method" and transpose.target == "permute":
            order = transpose.args[1] if len(transpose.args) == 2 else transpose.args[1:]  # permute((..)) or (..)
        swaps = (transpose is not None and transpose.op == "call_method"
                 and ((transpose.target == "transpose" and sorted(transpose.args[1:3]) == [1, 2])
                      or (order is not None and list(order) == [0, 2, 1, 3, 4])))
        if swaps:
            n = transpose
            while len(n.users) == 1:
                n = next(iter(n.users))
                chain.append(n)
                if self.kind(n) != "alias":
                    break
            merge = chain[-1]
            if self.kind(merge) in ("reshape", "flatten") and _shape(merge) == _shape(x):
                self.done.update(chain[:-1])
                self.shuffles[merge] = (x, groups)
                return
        raise self.unsupported(split, "a 5-d view that is not a channel shuffle")

    # -- the pass
    def run(self) -> tuple[list[ir.Node], str]:
        output = None
        for n in self.gm.graph.nodes:
            if n in self.done:
                continue
            if n.op == "output":
                out = n.args[0]
                if not isinstance(out, fx.Node) or out not in self.value:
                    raise XnorpipeError("cannot fold a model whose output is not one tensor")
                output = self.value[out]
                continue
            if _shape(n) is None:
                if n.op in ("placeholder", "get_attr"):
                    raise self.unsupported(n, "a non-tensor input" if n.op == "placeholder" else "get_attr")
                continue  # size arithmetic for view/reshape: their output shapes say what they do
            if n in self.shuffles:
                x, groups = self.shuffles[n]
                self.emit(ir.ChannelShuffle(groups), [x], n)
                continue
            self.fold(n)
        if output is None:
            raise XnorpipeError("cannot fold a model without an output")
        return self.nodes, output

    def fold(self, n: fx.Node) -> None:
        kind = self.kind(n)
        args = self.tensor_args(n)
        m = self.module(n) if n.op == "call_module" else None
        if kind == "input":
            if self.value:
                raise XnorpipeError("cannot fold a model with more than one input")
            self.value[n] = ir.INPUT
        elif kind in ("conv", "bconv"):
            if m.padding_mode != "zeros":
                raise self.unsupported(n, f"{type(m).__name__} padding_mode={m.padding_mode!r}")
            bn = self.bn_after(n)
            bn_module = self.module(bn) if bn is not None else None
            if kind == "conv":
                x, op = args[0], _float_conv(m, bn_module)
            else:
                (sign,) = args
                if self.kind(sign) != "sign":
                    raise XnorpipeError(f"cannot fold {self.path(n)} (BinaryConv2d): it reads {self.path(sign)}, "
                                        "not a BinaryActivation; binarize its input with xnorpipe.nn.BinaryActivation")
                x, threshold, invert = self.threshold_of(sign)
                op = _binary_conv(m, threshold, invert, bn_module)
            self.emit(_checked(op, self.path(n), self.problems), [x], n, bn)
            if bn is not None:  # the BatchNorm's output is the folded conv's
                self.done.add(bn)
                self.value[n] = self.value[bn]
        elif kind == "bn":
            if not self.feeds_signs_only(n):
                raise XnorpipeError(f"cannot fold {self.path(n)} (BatchNorm2d): a BatchNorm folds into the conv "
                                    "before it (when that conv feeds it alone) or into the thresholds of the "
                                    "BinaryActivations it feeds; supported are " + SUPPORTED)
        elif kind == "sign":
            bad = [u for u in n.users if self.kind(u) != "bconv"]
            if bad:
                raise XnorpipeError(f"cannot fold {self.path(n)} (BinaryActivation): it feeds {self.path(bad[0])}, "
                                    "and a sign may feed BinaryConv2d layers only")
        elif kind == "relu":
            self.emit(ir.Relu(), args, n)
        elif kind == "prelu":
            self.emit(ir.PRelu(slope=m.weight.detach().float().numpy().reshape(-1).copy()), args, n)
        elif kind == "clip":
            low, high = ((m.min_val, m.max_val) if m is not None else
                         (n.kwargs.get("min_val", n.args[1] if len(n.args) > 1 else -1.0),
                          n.kwargs.get("max_val", n.args[2] if len(n.args) > 2 else 1.0)))
            self.emit(ir.Clip(float(low), float(high)), args, n)
        elif kind in ("maxpool", "avgpool"):
            self.emit(_pool(m, kind, self.path(n)), args, n)
        elif kind == "gap":
            size = m.output_size if m is not None else (n.args[1] if len(n.args) > 1 else n.kwargs.get("output_size"))
            if _pair(size) != (1, 1):
                raise self.unsupported(n, f"adaptive average pool to {size}")
            h, w = _shape(args[0])[2:]
            self.emit(ir.AvgPool(kernel_shape=(h, w), strides=(h, w)), args, n)
        elif kind == "mean":  # x.mean((2, 3)): a global average pool, then flat unless keepdim
            dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            keepdim = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
            dims = {d % 4 for d in dims} if isinstance(dims, (list, tuple)) else None
            if len(_shape(args[0])) != 4 or dims != {2, 3}:
                raise self.unsupported(n, "a mean over other dimensions than (2, 3)")
            h, w = _shape(args[0])[2:]
            pool = ir.AvgPool(kernel_shape=(h, w), strides=(h, w))
            if keepdim:
                self.emit(pool, args, n)
            else:
                self.nodes.append(ir.Node(pool, (self.value[args[0]],), f"{n.name}.pool", self.path(n)))
                self.nodes.append(ir.Node(ir.Flatten(), (f"{n.name}.pool",), n.name, self.path(n)))
                self.value[n] = n.name
        elif kind == "add":
            if len(args) != 2 or _shape(args[0]) != _shape(args[1]) or n.kwargs.get("alpha", 1) != 1:
                raise self.unsupported(n, "an add that is not of two tensors of one shape")
            self.emit(ir.Add(), args, n)
        elif kind == "cat":
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            if len(_shape(n)) != 4 or dim not in (1, -3):
                raise self.unsupported(n, f"torch.cat on dim {dim}")
            self.emit(ir.Concat(), list(n.args[0]), n)
        elif kind == "shuffle":
            self.emit(ir.ChannelShuffle(m.groups), args, n)
        elif kind == "reshape":
            self.reshape(n)
        elif kind == "flatten":
            src, dst = _shape(args[0]), _shape(n)
            if len(src) != 4 or len(dst) != 2 or dst[0] != src[0]:
                raise self.unsupported(n, f"flatten {src[1:]} -> {dst[1:]}")
            self.emit(ir.Flatten(), args, n)
        elif kind == "linear":
            if len(_shape(args[0])) != 2:
                raise self.unsupported(n, "Linear on a tensor that is not flat")
            weight = m.weight.detach().float().numpy().copy()
            bias = (m.bias.detach().float().numpy().copy() if m.bias is not None
                    else np.zeros(weight.shape[0], np.float32))
            self.emit(_checked(ir.Linear(weight, bias), self.path(n), self.problems), args, n)
        elif kind == "alias":
            self.value[n] = self.value[args[0]]
        else:
            raise self.unsupported(n)


def _pool(m: nn.Module, kind: str, path: str) -> ir.MaxPool | ir.AvgPool:
    if kind == "maxpool":
        if m.ceil_mode or _pair(m.dilation) != (1, 1):
            raise XnorpipeError(f"cannot fold {path} (MaxPool2d with ceil_mode or dilation)")
        return ir.MaxPool(kernel_shape=_pair(m.kernel_size), strides=_pair(m.stride or m.kernel_size),
                          pads=_pads(m.padding))
    if m.ceil_mode or not m.count_include_pad or m.divisor_override:
        raise XnorpipeError(f"cannot fold {path} (AvgPool2d other than count_include_pad=True, floor mode)")
    return ir.AvgPool(kernel_shape=_pair(m.kernel_size), strides=_pair(m.stride or m.kernel_size),
                      pads=_pads(m.padding))


def fuse_relus(model: ir.DeployModel) -> ir.DeployModel:
    """Each Relu that alone reads a conv's output becomes that conv's `relu`."""
    nodes = list(model.nodes)
    consumers, producers = model.consumers(), model.producers()
    drop = set()
    for i, n in enumerate(nodes):
        if not isinstance(n.op, ir.Relu):
            continue
        src = n.inputs[0]
        p = producers.get(src)
        if (p is not None and isinstance(nodes[p].op, ir.CONVS) and not nodes[p].op.relu
                and consumers[src] == [i] and src != model.output):
            nodes[p] = dataclasses.replace(nodes[p], op=dataclasses.replace(nodes[p].op, relu=True), output=n.output)
            drop.add(i)
    return dataclasses.replace(model, nodes=[n for i, n in enumerate(nodes) if i not in drop],
                               metadata=dict(model.metadata))


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names (module path . tensor) of the float parameters and buffers holding NaN or inf."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _describe_nonfinite(model: nn.Module, name: str) -> str:
    t = dict([*model.named_parameters(), *model.named_buffers()])[name].detach()
    layer, _, tensor = name.rpartition(".")
    kind = type(model.get_submodule(layer)).__name__ if layer else type(model).__name__
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return f"layer {layer or '<model>'} ({kind}), tensor {tensor}: {nan} NaN and {inf} inf of {t.numel()} values"


# What a folded layer may hold: thresholds may be +-inf (saturated or gamma == 0 channels),
# nothing may be NaN, and weights, scales and biases are finite.
_FINITE_FIELDS = {ir.FloatConv: ("weight", "bias"), ir.BinaryConv: ("scale", "bias"), ir.Linear: ("weight", "bias")}


def _checked(layer: ir.FloatConv | ir.BinaryConv, path: str, problems: list[str]) -> ir.FloatConv | ir.BinaryConv:
    """Finite source tensors can still fold to non-finite ones (a negative running_var, an
    overflowing gamma / sqrt(var + eps)); `fold_model` reports them like non-finite sources."""
    bad = [f for f in _FINITE_FIELDS[type(layer)] if not np.isfinite(getattr(layer, f)).all()]
    if isinstance(layer, ir.BinaryConv) and np.isnan(layer.threshold).any():
        bad.append("threshold")
    if bad:
        problems.append(f"layer {path}: folded {', '.join(bad)} not finite (running_var < 0, "
                        "or gamma / sqrt(running_var + eps) overflows float32?)")
    return layer


# ------------------------------------------------------------------------- channel shuffles


def _permute_outputs(layer: ir.FloatConv | ir.BinaryConv, order: np.ndarray):
    """`layer` (group 1) whose output channel c is the old channel order[c]."""
    if isinstance(layer, ir.FloatConv):
        return dataclasses.replace(layer, weight=layer.weight[order], bias=layer.bias[order])
    return dataclasses.replace(layer, weight_bits=layer.weight_bits[order], scale=layer.scale[order],
                               bias=layer.bias[order])


def _permute_inputs(layer: ir.FloatConv | ir.BinaryConv, order: np.ndarray):
    """`layer` (group 1) that reads input channel order[c] where it read channel c: its input
    channel order[c] takes the weights (and threshold) of its old channel c."""
    inverse = np.argsort(order)
    if isinstance(layer, ir.FloatConv):
        return dataclasses.replace(layer, weight=layer.weight[:, inverse])
    positive = unpack_weights(layer.weight_bits, layer.in_channels)[:, inverse] > 0
    return dataclasses.replace(layer, weight_bits=pack_weights(positive), threshold=layer.threshold[inverse])


def _conv_before(model: ir.DeployModel, i: int) -> int | None:
    """The conv whose output reaches node i only, through channel-wise nodes that each feed
    only the next."""
    nodes, consumers, producers = model.nodes, model.consumers(), model.producers()
    reader, t = i, nodes[i].inputs[0]
    while consumers[t] == [reader] and t in producers:
        j = producers[t]
        if isinstance(nodes[j].op, ir.CONVS):
            return j
        if not isinstance(nodes[j].op, ir.CHANNELWISE):
            return None
        reader, t = j, nodes[j].inputs[0]
    return None


def _conv_after(model: ir.DeployModel, i: int) -> int | None:
    """The conv that alone reads node i's output, through channel-wise nodes that each feed
    only the next."""
    nodes, consumers = model.nodes, model.consumers()
    t = nodes[i].output
    while len(consumers[t]) == 1 and t != model.output:
        j = consumers[t][0]
        if isinstance(nodes[j].op, ir.CONVS):
            return j
        if not isinstance(nodes[j].op, ir.CHANNELWISE):
            return None
        t = nodes[j].output
    return None


def fold_shuffles(model: ir.DeployModel) -> ir.DeployModel:
    """The model with its channel shuffles folded into the convolutions around them.

    A shuffle is a permutation of channels, and pools and ReLU act on each channel alone, so it
    moves (when nothing else reads the tensors on the way) into, in this order of preference:
    - a group-1 producer: its filters, scales and biases are permuted (exact);
    - a grouped binary producer with as many groups as the shuffle: `shuffle_output`, the
      packed-bits ops' output shuffle (exact: the same values, written in shuffled order). No
      permutation of filters can do this: a consumer group reads channels of every producer
      group, so no channel order makes both layers' groups contiguous;
    - a group-1 consumer: its input channels (weights, and a binary layer's thresholds) are
      permuted. Exact for a binary consumer (integer sums); a float consumer adds the same
      products in another order, a float rounding difference.
    Any other shuffle stays. The binary layers then pass bits to each other (packed-bits).
    """
    model = dataclasses.replace(model, nodes=list(model.nodes), metadata=dict(model.metadata))
    i = 0
    while i < len(model.nodes):
        shuffle = model.nodes[i].op
        if not isinstance(shuffle, ir.ChannelShuffle):
            i += 1
            continue
        nodes = model.nodes
        channels = ir.tensor_shapes(model)[nodes[i].inputs[0]][0]
        order = ir.shuffle_order(channels, shuffle.groups)
        before, after = _conv_before(model, i), _conv_after(model, i)
        producer = nodes[before].op if before is not None else None
        consumer = nodes[after].op if after is not None else None
        if producer is not None and producer.group == 1:
            nodes[before] = dataclasses.replace(nodes[before], op=_permute_outputs(producer, order))
        elif (isinstance(producer, ir.BinaryConv) and producer.group == shuffle.groups
              and not producer.shuffle_output):
            nodes[before] = dataclasses.replace(nodes[before], op=dataclasses.replace(producer, shuffle_output=True))
        elif consumer is not None and consumer.group == 1:
            nodes[after] = dataclasses.replace(nodes[after], op=_permute_inputs(consumer, order))
        else:
            i += 1
            continue
        src, dst = nodes[i].inputs[0], nodes[i].output
        del nodes[i]
        for k, n in enumerate(nodes):  # readers of the shuffle read its input
            if dst in n.inputs:
                nodes[k] = dataclasses.replace(n, inputs=tuple(src if t == dst else t for t in n.inputs))
        if model.output == dst:
            model.output = src
    return model


def default_classes() -> tuple[str, ...]:
    try:
        from xnorpipe.data import CLASSES  # the data module's names, when it is installed
        return tuple(CLASSES)
    except ImportError:
        return ("airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck")


def fold_model(model: nn.Module, *, arch: str, input_shape: tuple[int, int, int] = (3, 32, 32),
               classes: Iterable[str] | None = None, metadata: Mapping[str, str] | None = None,
               allow_nonfinite: bool = False, channel_shuffles: bool = True) -> ir.DeployModel:
    """Fold any model built from xnorpipe.nn's binary layers and the torch.nn layers of
    `SUPPORTED` (eval-mode semantics: BN running statistics) into the graph IR, by tracing it
    with torch.fx on `input_shape` (C, H, W).

    `channel_shuffles` folds the channel shuffles into the layers around them (`fold_shuffles`);
    False keeps them as nodes (the unfolded IR, for comparison).

    NaN or inf in a weight or a BatchNorm statistic (or a fold that overflows) is refused with
    one line naming the layer and the tensor: they are outside the contract's arithmetic (ONNX
    leaves Max/Relu of NaN open, a NaN weight has no sign bit), so forms and runtimes may
    disagree on them. `allow_nonfinite` folds them anyway and lists them in the
    `xnorpipe.nonfinite` metadata.
    """
    sources = nonfinite_tensors(model)
    if sources and not allow_nonfinite:
        more = f" (and {len(sources) - 1} more tensors)" if len(sources) > 1 else ""
        raise XnorpipeError(f"non-finite values in {_describe_nonfinite(model, sources[0])}{more}: the "
                            "exported forms may disagree on them; fix the model, or pass --allow-nonfinite")
    problems: list[str] = []
    nodes, output = _Folder(trace(model, tuple(input_shape)), problems).run()
    if problems and not allow_nonfinite:
        more = f" (and {len(problems) - 1} more layers)" if len(problems) > 1 else ""
        raise XnorpipeError(f"{problems[0]}{more}; pass --allow-nonfinite to export anyway")
    if not nodes:
        raise XnorpipeError(f"{type(model).__name__} has no layers to fold")
    metadata = dict(metadata or {})
    if sources or problems:  # folded non-finite values from non-finite sources are no news
        metadata["xnorpipe.nonfinite"] = "; ".join(sources or problems)
    deploy = ir.DeployModel(arch=arch, nodes=nodes, output=output, input_shape=tuple(input_shape),
                            classes=tuple(classes) if classes is not None else default_classes(),
                            metadata=metadata)
    ir.tensor_shapes(deploy)  # the graph is consistent
    deploy = fuse_relus(deploy)
    return fold_shuffles(deploy) if channel_shuffles else deploy
