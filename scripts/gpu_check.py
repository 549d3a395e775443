#!/usr/bin/env python3
"""GPU checks of xnorpipe's CUDA XnorConv2d kernels; scripts/gpu_check.sh builds and runs it.

Parts (each isolated: an exception is reported and the rest still runs):
  A. exactness: every kernel path and kernel file form the GPU supports vs
     xnorpipe.deploy.reference.xnor_conv2d on random shapes (bit-exact, torch.equal);
  B. nin_xnornet end to end on CUDA: torch-xnor engine vs the PyTorch deploy module on
     CIFAR-10 test images (checkpoint if present, else random init);
  C. timings: each nin_xnornet binary layer vs cuDNN convolutions of the same shape
     (fp32, tf32, fp16) at batch 1 and 256, and whole-model latency.
Exit status 1 if any exactness or parity check fails, or a part crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

T0 = time.perf_counter()
REPORT: list[str] = []  # markdown
FAILURES: list[str] = []
PARTS: dict[str, str] = {}


def log(msg: str = "") -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def md(line: str = "") -> None:
    REPORT.append(line)


def run_part(name: str, fn, *args, **kwargs):
    log(f"=== {name}")
    t = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
        PARTS[name] = f"ran ({time.perf_counter() - t:.1f} s)"
        return out
    except Exception as e:
        tb = traceback.format_exc()
        print(tb, flush=True)
        PARTS[name] = f"CRASHED: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        FAILURES.append(f"{name} crashed: {type(e).__name__}: {e}")
        md(f"\n**{name} crashed**: `{type(e).__name__}: {str(e)[:300]}`")
        return None


# ------------------------------------------------------------------------ A. exactness


def random_case(rng: random.Random, i: int) -> dict:
    """A random XnorConv2d problem in the brief's ranges (channels/filters 1..300)."""
    fixed = [  # nin_xnornet's layers and word/chunk boundaries first
        dict(n=2, c=192, m=160, k=(1, 1), s=(1, 1), d=(1, 1), p=(0, 0, 0, 0), g=1, hw=(32, 32), relu=True),
        dict(n=2, c=96, m=192, k=(3, 3), s=(1, 1), d=(1, 1), p=(1, 1, 1, 1), g=1, hw=(16, 16), relu=True),
        dict(n=3, c=192, m=192, k=(3, 3), s=(1, 1), d=(1, 1), p=(1, 1, 1, 1), g=1, hw=(8, 8), relu=True),
        dict(n=1, c=256, m=64, k=(3, 3), s=(1, 1), d=(1, 1), p=(1, 1, 1, 1), g=1, hw=(5, 7), relu=False),
        dict(n=1, c=257, m=65, k=(3, 3), s=(2, 2), d=(1, 1), p=(0, 1, 2, 0), g=1, hw=(9, 6), relu=False),
        dict(n=2, c=300, m=300, k=(5, 5), s=(2, 2), d=(2, 2), p=(2, 1, 0, 2), g=1, hw=(12, 13), relu=True),
        dict(n=1, c=32, m=1, k=(1, 1), s=(1, 1), d=(1, 1), p=(0, 0, 0, 0), g=1, hw=(1, 1), relu=False),
        dict(n=4, c=1, m=3, k=(3, 3), s=(1, 1), d=(1, 1), p=(2, 2, 2, 2), g=1, hw=(1, 1), relu=True),
        dict(n=2, c=288, m=96, k=(3, 3), s=(1, 2), d=(2, 1), p=(1, 0, 1, 2), g=3, hw=(10, 11), relu=True),
        dict(n=1, c=64, m=64, k=(3, 3), s=(1, 1), d=(1, 1), p=(1, 1, 1, 1), g=64, hw=(6, 6), relu=False),
    ]
    if i < len(fixed):
        return fixed[i]
    g = rng.choice([1] * 6 + [2, 3, 4, 8])
    cg = rng.randint(1, 300 // g)
    mg = rng.randint(1, 300 // g)
    kh = rng.choice([1, 3, 5])
    kw = kh if rng.random() < 0.8 else rng.choice([1, 3, 5])
    s = (rng.choice([1, 2]), rng.choice([1, 2]))
    d = (rng.choice([1, 1, 1, 2]), rng.choice([1, 1, 1, 2]))
    p = tuple(rng.randint(0, 2) for _ in range(4))
    n = rng.randint(1, 4)
    hmin = max(1, (kh - 1) * d[0] + 1 - p[0] - p[2])
    wmin = max(1, (kw - 1) * d[1] + 1 - p[1] - p[3])
    h, w = rng.randint(hmin, max(hmin, 16)), rng.randint(wmin, max(wmin, 16))
    # keep the CPU float64 reference affordable
    while n * cg * g * mg * kh * kw * h * w > 3e8 and (h > hmin or w > wmin or n > 1):
        if n > 1:
            n -= 1
        else:
            h, w = max(hmin, h // 2), max(wmin, w // 2)
    return dict(n=n, c=cg * g, m=mg * g, k=(kh, kw), s=s, d=d, p=p, g=g, hw=(h, w), relu=rng.random() < 0.5)


def make_operands(case: dict, seed: int):
    import numpy as np
    import torch

    from xnorpipe.deploy.packing import pack_weights

    gen = torch.Generator().manual_seed(seed)
    n, c, m, (kh, kw), g = case["n"], case["c"], case["m"], case["k"], case["g"]
    h, w = case["hw"]
    x = torch.randn(n, c, h, w, generator=gen)
    thr = torch.randn(c, generator=gen) * 0.5
    if c > 2:  # BN gamma == 0 folds to +-inf thresholds
        thr[0], thr[1] = float("-inf"), float("inf")
    flat = x.view(-1)
    k = max(1, flat.numel() // 50)
    idx = torch.randperm(flat.numel(), generator=gen)[: 2 * k]
    flat[idx[:k]] = float("nan")  # NaN -> -1
    ties = idx[k:]
    chan = (ties // (h * w)) % c
    flat[ties] = thr[chan]  # x == thr -> +1 (x = -inf/+inf also ties)
    positive = torch.rand(m, c // g, kh, kw, generator=gen).numpy() < 0.5
    wbits = pack_weights(positive)
    if seed % 2 and (c // g) % 32:  # the contract: bits past C/group are ignored
        garbage = np.uint32(0xFFFFFFFF) << np.uint32((c // g) % 32)
        wbits = wbits.copy()
        wbits[..., -1] |= garbage.astype(np.uint32).view(np.int32)
    scale = torch.randn(m, generator=gen)
    bias = torch.randn(m, generator=gen)
    return x, wbits, thr, scale, bias


def part_exactness(n_cases: int, seed: int, deadline: float) -> None:
    import torch

    from xnorpipe.deploy.reference import xnor_conv2d
    from xnorpipe.gpu import plan as P
    from xnorpipe.runtime.torch_xnor import CudaKernels, xnor_conv2d_cuda

    cap = torch.cuda.get_device_capability()
    cc = cap[0] * 10 + cap[1]
    default = CudaKernels(torch.cuda.current_device())
    variants = [("popc", default)]
    if 80 <= cc < 100:
        variants.insert(0, ("mma", default))
    # The other forms of the kernels: PTX JIT of the same arch (what TensorRT's AOT plugin
    # loads), and the sm_75 PTX forward-compiled (what sm_100+ GPUs load).
    extra = []
    try:
        ptx_same = CudaKernels(torch.cuda.current_device(), arch=default.arch, fmt="ptx")
        extra += [(k, ptx_same) for k, _ in variants]
        if default.arch != 75:
            extra.append(("popc", CudaKernels(torch.cuda.current_device(), arch=75, fmt="ptx")))
    except Exception as e:
        FAILURES.append(f"loading PTX forms failed: {type(e).__name__}: {e}")
        log(f"loading PTX forms failed: {e}")
    log(f"kernels: {default.path} ({default.format}); paths {[v[0] for v in variants]}; "
        f"extra forms {[(k, Path(v.path).name) for k, v in extra]}")

    rng = random.Random(seed)
    tiles = [None, None, None, (8, 8), (4, 16), (16, 4), (2, 32), (1, 64), (4, 4), (1, 1), (3, 5), (7, 9)]
    checked = failed = 0
    first_fail: list[str] = []
    per_variant: dict[str, list[int]] = {}
    done_cases = 0
    for i in range(n_cases):
        if time.perf_counter() > deadline:
            log(f"exactness: time budget reached after {i} cases")
            break
        case = random_case(rng, i)
        x, wbits, thr, scale, bias = make_operands(case, seed * 1000 + i)
        kw = dict(strides=case["s"], pads=case["p"], dilations=case["d"], group=case["g"], relu=case["relu"])
        ref = xnor_conv2d(x, wbits, thr, scale, bias, **kw)
        xc = x.cuda()
        tile = rng.choice(tiles) if i >= 10 else None
        attrs = P.conv_attrs(case["k"], case["s"], case["p"], case["d"], case["g"], case["relu"])
        if tile is not None:
            try:
                P.launch_plan(tuple(x.shape), case["m"], attrs, tile)
            except ValueError:
                tile = None
        todo = list(variants) + (extra if i % 4 == 0 else [])
        for kname, mod in todo:
            label = f"{kname}/{Path(mod.path).name}"
            y = xnor_conv2d_cuda(xc, wbits, thr, scale, bias, **kw, kernel=kname, tile=tile, kernels=mod)
            torch.cuda.synchronize()
            y = y.cpu()
            ok = y.shape == ref.shape and torch.equal(y, ref)
            stats = per_variant.setdefault(label, [0, 0])
            stats[0] += 1
            checked += 1
            if not ok:
                stats[1] += 1
                failed += 1
                if len(first_fail) < 8:
                    diff = (y - ref).abs() if y.shape == ref.shape else None
                    bad = int((~torch.isclose(y, ref, rtol=0, atol=0)).sum()) if diff is not None else -1
                    first_fail.append(f"{label} case {i} {case} tile={tile}: {bad} of {ref.numel()} differ, "
                                      f"max |diff| {float(diff.max()) if diff is not None else 'shape'}")
        done_cases += 1
        if i % 25 == 0:
            log(f"exactness: case {i}: {checked} checks, {failed} failed")
    md("\n## A. Kernel exactness vs `xnorpipe.deploy.reference.xnor_conv2d`")
    md(f"\n{done_cases} random shapes (channels/filters 1..300, k 1/3/5, stride 1/2, dilation 1/2, "
       "asymmetric pads 0..2, groups, batch 1..4, relu; NaN inputs, ties x == threshold, +-inf "
       "thresholds, garbage pad bits in the weights, forced tile shapes), bit-exact (torch.equal).\n")
    md("| kernel / file | checks | failed |")
    md("|---|---:|---:|")
    for label, (cnt, bad) in per_variant.items():
        md(f"| {label} | {cnt} | {bad} |")
    if first_fail:
        md("\nFirst failures:\n")
        for f in first_fail:
            md(f"- `{f}`")
    log(f"exactness: {checked} checks, {failed} failed")
    if failed:
        FAILURES.append(f"exactness: {failed} of {checked} kernel checks differ from the reference")
    if checked == 0:
        FAILURES.append("exactness: nothing was checked")


# ------------------------------------------------------------------- B. end to end


def load_deploy_model(arch: str):
    from xnorpipe.deploy.fold import fold_model, load_source_model

    ckpt = ROOT / "checkpoints" / f"cifar10_{arch}_best.pth.tar"
    if not ckpt.is_file():
        from xnorpipe.checkpoint import default_checkpoint

        ckpt = ROOT / default_checkpoint(arch)
    if ckpt.is_file():
        model, meta = load_source_model(arch, checkpoint=ckpt)
        source = f"checkpoint {ckpt.name}"
    else:
        model, meta = load_source_model(arch, random_init=True)
        source = "random init (no checkpoint)"
    return model, fold_model(model, arch=arch, metadata=meta), source


def load_test_images(data: str | None, limit: int):
    import torch

    from xnorpipe.data import load_cifar10, normalize, to_tensor

    if not data or not Path(data).exists():
        raise FileNotFoundError(f"CIFAR-10 data not found: {data!r}")
    ds = load_cifar10(data, progress=False)
    imgs = ds.test_images[:limit]
    x = normalize(to_tensor(imgs, "cuda"))
    return x, torch.from_numpy(ds.test_labels[:limit]).cuda()


def part_end_to_end(arch: str, data: str | None, limit: int) -> dict:
    import torch

    from xnorpipe.deploy.module import DeployModule
    from xnorpipe.runtime.torch_xnor import TorchXnorEngine

    model, ir, source = load_deploy_model(arch)
    try:
        x, labels = load_test_images(data, limit)
        inputs = f"{x.shape[0]} CIFAR-10 test images"
    except Exception as e:
        log(f"data unavailable ({type(e).__name__}: {e}); using random inputs")
        x, labels = torch.randn(512, 3, 32, 32, device="cuda"), None
        inputs = f"512 random inputs (data unavailable: {type(e).__name__})"
    ref_mod = DeployModule(ir).cuda().eval()
    src_mod = model.cuda().eval()
    cap = torch.cuda.get_device_capability()
    kernels = ["mma", "popc"] if 80 <= cap[0] * 10 + cap[1] < 100 else ["popc"]
    engines = {k: TorchXnorEngine(model=ir, kernel=k) for k in kernels}

    def run(fn, bs=500):
        outs = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], bs):
                outs.append(fn(x[i:i + bs]))
        torch.cuda.synchronize()
        return torch.cat(outs)

    ref = run(ref_mod)
    src = run(src_mod)
    md(f"\n## B. {arch} end to end on CUDA ({source}; {inputs})\n")
    md("| engine | top-1 agree w/ deploy module | identical logits | max abs diff | median abs diff | accuracy |")
    md("|---|---:|---:|---:|---:|---:|")

    def acc(y):
        return f"{(y.argmax(1) == labels).float().mean().item() * 100:.2f} %" if labels is not None else "-"

    md(f"| deploy module (oracle) | - | - | - | - | {acc(ref)} |")
    agree_src = (src.argmax(1) == ref.argmax(1)).float().mean().item()
    d_src = (src - ref).abs()
    md(f"| source PyTorch model (fold parity) | {agree_src * 100:.2f} % | {torch.equal(src, ref)} | "
       f"{d_src.max().item():.3g} | {d_src.median().item():.3g} | {acc(src)} |")
    out = {}
    for k, eng in engines.items():
        y = run(eng.forward)
        agree = (y.argmax(1) == ref.argmax(1)).float().mean().item()
        diff = (y - ref).abs()
        same = torch.equal(y, ref)
        md(f"| torch-xnor ({eng.kernel_name}) | {agree * 100:.2f} % | {same} | {diff.max().item():.3g} | "
           f"{diff.median().item():.3g} | {acc(y)} |")
        log(f"e2e {k}: agree {agree * 100:.3f} %, identical {same}, max diff {diff.max().item():.3g}")
        # the contract's parity bar (XNORCONV2D.md), against the same-precision oracle
        if agree < 0.999 or diff.median().item() > 1e-4:
            FAILURES.append(f"e2e torch-xnor ({k}): top-1 agreement {agree * 100:.2f} %, "
                            f"median |diff| {diff.median().item():.3g}")
        out[k] = eng
    out["_ir"] = ir
    out["_ref"] = ref_mod
    return out


# --------------------------------------------------------------------- C. timings

NIN_LAYERS = [  # name, C, M, k, pad, H (=W); all groups 1, stride 1
    ("L1", 192, 160, 1, 0, 32), ("L2", 160, 96, 1, 0, 32), ("L3", 96, 192, 3, 1, 16),
    ("L4", 192, 192, 1, 0, 16), ("L5", 192, 192, 1, 0, 16), ("L6", 192, 192, 3, 1, 8),
    ("L7", 192, 192, 1, 0, 8),
]


class Timer:
    """Median time per call from CUDA events; CUDA graphs remove Python launch overhead
    where capture works (else eager, and the table says so)."""

    def __init__(self, use_graphs: bool):
        self.use_graphs = use_graphs

    def __call__(self, fn, iters: int = 20, reps: int = 15) -> tuple[float, str]:
        import torch

        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        graph = None
        if self.use_graphs:
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(2):
                        fn()
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for _ in range(iters):
                        fn()
                torch.cuda.synchronize()
            except Exception as e:
                log(f"graph capture failed ({type(e).__name__}: {e}); eager timing")
                graph = None
                torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            if graph is not None:
                graph.replay()
            else:
                for _ in range(iters):
                    fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / iters * 1000.0)  # us
        return statistics.median(times), ("graph" if graph is not None else "eager")


def graphs_work() -> bool:
    """Can a CuPy launch of our kernel be captured in a torch CUDA graph? (tested once)"""
    import torch

    from xnorpipe.runtime.torch_xnor import xnor_conv2d_cuda

    x = torch.randn(1, 64, 8, 8, device="cuda")
    w = torch.zeros(64, 1, 1, 2, dtype=torch.int32, device="cuda")  # all operands on the GPU:
    ones, zeros = torch.ones(64, device="cuda"), torch.zeros(64, device="cuda")  # no copies in capture
    try:
        xnor_conv2d_cuda(x, w, zeros, ones, ones)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = xnor_conv2d_cuda(x, w, zeros, ones, ones)
        x.normal_()  # the replay must see new data
        g.replay()
        torch.cuda.synchronize()
        ref = xnor_conv2d_cuda(x, w, zeros, ones, ones)
        torch.cuda.synchronize()
        return bool(torch.equal(y, ref))
    except Exception as e:
        log(f"CUDA graph capture of the CuPy launch does not work ({type(e).__name__}: {e}); eager timings")
        torch.cuda.synchronize()
        return False


def part_timings(e2e: dict | None) -> None:
    import torch
    import torch.nn.functional as F

    from xnorpipe.deploy.packing import pack_weights
    from xnorpipe.runtime.torch_xnor import cuda_kernels, xnor_conv2d_cuda

    torch.backends.cudnn.benchmark = True
    use_graphs = graphs_work()
    timer = Timer(use_graphs)
    cap = torch.cuda.get_device_capability()
    paths = ["mma", "popc"] if 80 <= cap[0] * 10 + cap[1] < 100 else ["popc"]
    md(f"\n## C. Timings on {torch.cuda.get_device_name()} (median us per call, CUDA events, "
       f"{'CUDA graphs' if use_graphs else 'eager launches'})\n")
    md("Ours = the whole fused op (binarize float input, binary conv, scale, bias, relu), float32 "
       "in/out. cuDNN = the convolution alone on float inputs of the same shape.\n")
    head = "| layer | batch | " + " | ".join(f"ours {p}" for p in paths) + \
        " | cuDNN fp32 | cuDNN tf32 | cuDNN fp16 (NHWC) | best ours vs fp16 | vs fp32 |"
    md(head)
    md("|" + "---|" * (head.count("|") - 1))
    gen = torch.Generator().manual_seed(1)
    for name, c, m, k, pad, hw in NIN_LAYERS:
        for batch in (1, 256):
            x = torch.randn(batch, c, hw, hw, device="cuda")
            positive = torch.rand(m, c, k, k, generator=gen).numpy() < 0.5
            wbits = torch.from_numpy(pack_weights(positive)).cuda()
            thr, scale, bias = torch.zeros(c, device="cuda"), torch.rand(m, device="cuda"), torch.randn(m, device="cuda")
            wf = torch.from_numpy(positive.astype("float32") * 2 - 1).cuda()
            row = []
            ours = []
            for p in paths:
                t, _ = timer(lambda: xnor_conv2d_cuda(x, wbits, thr, scale, bias, pads=(pad,) * 4, relu=True, kernel=p))
                ours.append(t)
                row.append(f"{t:.1f}")
            torch.backends.cudnn.allow_tf32 = False
            t32, _ = timer(lambda: F.conv2d(x, wf, padding=pad))
            torch.backends.cudnn.allow_tf32 = True
            ttf, _ = timer(lambda: F.conv2d(x, wf, padding=pad))
            xh = x.half().to(memory_format=torch.channels_last)
            wh = wf.half().to(memory_format=torch.channels_last)
            t16, _ = timer(lambda: F.conv2d(xh, wh, padding=pad))
            best = min(ours)
            row += [f"{t32:.1f}", f"{ttf:.1f}", f"{t16:.1f}", f"{t16 / best:.2f}x", f"{t32 / best:.2f}x"]
            md(f"| {name} {c}->{m} k{k} @{hw}x{hw} | {batch} | " + " | ".join(row) + " |")
            log(f"timing {name} b{batch}: ours {ours} fp32 {t32:.1f} tf32 {ttf:.1f} fp16 {t16:.1f}")
            del x, xh
    torch.backends.cudnn.allow_tf32 = True

    if not e2e:
        md("\n(whole-model latency skipped: part B did not produce engines)")
        return
    md("\nWhole nin_xnornet (normalised float32 input on the GPU -> logits), median us per batch:\n")
    md("| model | batch | " + " | ".join(f"torch-xnor {p}" for p in paths if p in e2e) + " | deploy module fp32 (sign + cuDNN conv) |")
    md("|---|---:|" + "---:|" * (len([p for p in paths if p in e2e]) + 1))
    ref_mod = e2e["_ref"]
    for batch in (1, 256):
        x = torch.randn(batch, 3, 32, 32, device="cuda")
        row = []
        with torch.inference_mode():
            for p in paths:
                if p in e2e:
                    t, how = timer(lambda: e2e[p].forward(x), iters=10, reps=10)
                    row.append(f"{t:.1f} ({how})")
            t, how = timer(lambda: ref_mod(x), iters=10, reps=10)
            row.append(f"{t:.1f} ({how})")
        md(f"| nin_xnornet | {batch} | " + " | ".join(row) + " |")
        log(f"model b{batch}: {row}")


# ---------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("XNORPIPE_DATA"), help="CIFAR-10 (e.g. shared/data/cifar10-jpeg.tar.gz)")
    ap.add_argument("--cuda-dir", default=os.environ.get("XNORPIPE_CUDA_DIR"), help="directory of the built PTX/cubin")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="write gpu_check.md/json here")
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--budget", type=float, default=400.0, help="seconds for the whole run (soft)")
    ap.add_argument("--build-log", default=None, help="nvcc build summary to include")
    args = ap.parse_args()
    if args.cuda_dir:
        os.environ["XNORPIPE_CUDA_DIR"] = str(Path(args.cuda_dir).resolve())

    md("# xnorpipe GPU check\n")
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        cap = torch.cuda.get_device_capability()
        try:
            import cupy
            cupy_v = cupy.__version__
        except Exception as e:
            cupy_v = f"unavailable ({type(e).__name__})"
        md(f"- GPU: {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}), torch {torch.__version__} "
           f"(CUDA {torch.version.cuda}), CuPy {cupy_v}, Python {platform.python_version()}")
        md(f"- kernels: `{os.environ.get('XNORPIPE_CUDA_DIR', '(default search)')}`")
        if args.build_log and Path(args.build_log).is_file():
            md(f"- build: {Path(args.build_log).read_text().strip()}")
        log(REPORT[-1])
    except Exception as e:
        md(f"**No usable CUDA GPU: {e}**")
        FAILURES.append(f"no CUDA: {e}")
        return finish(args)

    deadline = T0 + args.budget
    try:
        run_part("A. exactness", part_exactness, args.cases, args.seed, deadline - 170)
        e2e = run_part("B. end to end", part_end_to_end, "nin_xnornet", args.data, args.images)
        run_part("C. timings", part_timings, e2e)
    except KeyboardInterrupt:  # gpu_check.sh's timeout: still write what was measured
        FAILURES.append("interrupted by the time limit")
    return finish(args)


def finish(args) -> int:
    md("\n## Summary\n")
    md("| part | status |")
    md("|---|---|")
    for name, status in PARTS.items():
        md(f"| {name} | {status} |")
    md(f"\n**{'FAILED' if FAILURES else 'PASSED'}** in {time.perf_counter() - T0:.0f} s"
       + ("".join(f"\n- {f}" for f in FAILURES) if FAILURES else ""))
    text = "\n".join(REPORT) + "\n"
    print("\n" + text, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.md").write_text(text)
        (out / "gpu_check.json").write_text(json.dumps({"failures": FAILURES, "parts": PARTS}, indent=2))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
