#!/usr/bin/env python3
"""One GPU session of xnorpipe, the project's only GPU harness (scripts/gpu_session.sh runs it).

Fits in 9 minutes on one H100/H200 with PyTorch, Triton, CuPy and nvcc; no network, no pip,
no TensorRT. Parts, most valuable first, each isolated (an exception is reported and the rest
runs) and each written to OUT/gpu_session.json and OUT/gpu_session.md as soon as it ends, so a
timeout still leaves every finished part:
  a. exactness: the Triton kernels on the GPU against xnorpipe.deploy.reference on the
     interpreter tests' random cases (xnorpipe.gpu.kernel_cases), every convolution with both
     algorithms ("popcount" and "dot"), and the hand-written CUDA kernel (built here with nvcc,
     loaded with CuPy) on their XnorConv2d cases;
  b. nin_xnornet parity on CUDA against the PyTorch model on the CIFAR-10 test set (top-1
     agreement, median and max |logit difference|), torch-xnor packed and packed-bits, from
     checkpoints/cifar10_nin_xnornet_best.pth.tar if present, else a BN-calibrated random init;
  c. timings at batch 1, 64 and 256 (CUDA events, warm-up, medians; CUDA graphs): each binary
     layer on Triton, both algorithms, float in and bits in (and the CUDA kernel) against cuDNN
     on the same float conv in FP32, TF32 and FP16; a tile sweep of the dot algorithm per layer
     (`config=`: BLOCK_M, BLOCK_P, BLOCK_K, num_warps, num_stages) at batch 256, whose best
     configuration per layer is what the tile table should say; the whole network on
     torch-xnor against the float graph on cuDNN;
  d. training: the seed's recipe for nin_xnornet (--amp, data on the GPU) under a wall-clock
     cap, images/s, epochs and best top-1; the checkpoint is copied to OUT;
  b2. part b again on the checkpoint part d wrote, when time is left.
Exit status 1 when an exactness or parity check fails or a part crashes.

Triton compiles every kernel configuration the first time it runs (a second or two each, on
one core): the session's 60-odd exactness configurations and 200-odd sweep configurations would
not fit its minutes compiled one by one. A compile farm (`CompileFarm`, worker processes)
compiles them ahead, in the order the parts need them, into Triton's on-disk cache, where the
session's own launches find them.

`--dry-run` runs every step on the CPU with tiny sizes (the Triton kernels in Triton's
interpreter, a few images, one short epoch on a subset, float timings on the CPU), so a GPU
minute is never spent on a typo; tests/test_gpu_session.py runs it in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARCH = "nin_xnornet"
CASES_SEED = 20261130  # tests/test_triton_kernels.py's SEED: the same random cases as CI's interpreter run
CHECKPOINT = ROOT / "checkpoints" / f"cifar10_{ARCH}_best.pth.tar"
AGREEMENT_MIN, MEDIAN_DIFF_MAX = 99.9, 1e-4  # docs/XNORCONV2D.md, parity to expect


@dataclass(frozen=True)
class Plan:
    """Sizes of one session: the GPU's, or the dry run's tiny ones."""

    device: str
    random_cases: int
    layer_cases: int
    parity_images: int | None  # None: the whole test set
    parity_batch: int
    batches: tuple[int, ...]
    timing_layers: int
    iters: int
    reps: int
    warmup: int
    whole_engines: tuple[str, ...]  # torch-xnor variants timed on the whole network
    cuda_archs: tuple[int, ...]
    train_args: tuple[str, ...]
    budgets: tuple[tuple[str, float], ...]  # part -> share of the time left when it starts
    compile_workers: int  # processes of the compile farm (at most the CPUs less 4)
    sweep_batch: int  # the dot tile sweep's batch
    sweep_configs: int | None  # configurations swept per layer and op (None: all of SWEEP)
    sweep_iters: int
    sweep_reps: int


GPU_PLAN = Plan(device="cuda", random_cases=300, layer_cases=24, parity_images=None, parity_batch=500,
                batches=(1, 64, 256), timing_layers=7, iters=20, reps=15, warmup=3,
                whole_engines=("packed-bits", "packed", "packed-bits eager", "packed cuda"),
                cuda_archs=(75, 80, 86, 89, 90),
                train_args=("--amp", "--device", "cuda"),
                budgets=(("exactness", 0.20), ("parity", 0.15), ("timings", 0.40), ("training", 0.80),
                         ("parity_trained", 1.0)),
                compile_workers=12, sweep_batch=256, sweep_configs=None, sweep_iters=10, sweep_reps=5)
DRY_PLAN = Plan(device="cpu", random_cases=6, layer_cases=1, parity_images=2, parity_batch=2, batches=(1,),
                timing_layers=1, iters=1, reps=1, warmup=1, whole_engines=("packed-bits",), cuda_archs=(90,),
                train_args=("--device", "cpu", "--epochs", "1", "--subset", "100", "--test-subset", "50",
                            "--batch-size", "50"),
                budgets=(("exactness", 0.2), ("parity", 0.2), ("timings", 0.4), ("training", 0.8),
                         ("parity_trained", 1.0)),
                compile_workers=1, sweep_batch=1, sweep_configs=2, sweep_iters=1, sweep_reps=1)


# ------------------------------------------------------------------------------ session


class Session:
    """Results, their files, the clock."""

    def __init__(self, out: Path, budget: float, plan: Plan, dry_run: bool, data: str | None, work: Path):
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.out = out
        self.plan = plan
        self.dry_run = dry_run
        self.data = data
        self.work = work  # the CUDA build, the training run: what does not go back in OUT
        self.results: dict = {"session": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                          "dry_run": dry_run, "budget_s": budget, "data": data,
                                          "plan": asdict(plan)},
                              "parts": {}, "failures": []}
        self.markdown: dict[str, str] = {}
        self.cuda_build: subprocess.Popen | None = None
        self.sources: dict = {}  # checkpoint (or None) -> (model, IR, description)
        self.farm: CompileFarm | None = None
        self.cases: list | None = None  # part a's (case, algo) checks

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def fail(self, what: str) -> None:
        self.results["failures"].append(what)
        self.log(f"FAIL: {what}")

    def write(self) -> None:
        from xnorpipe.utils import atomic_write_text

        self.results["session"]["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        if self.farm is not None:
            self.results["session"]["compile_farm"] = self.farm.summary()
        parts = self.results["parts"]
        self.results["passed"] = (not self.results["failures"]
                                  and all(parts.get(k, {}).get("status") == "ok" for k in ("exactness", "parity"))
                                  and all(p["status"] in ("ok", "skipped") for p in parts.values()))
        atomic_write_text(self.out / "gpu_session.json", json.dumps(self.results, indent=2, default=str) + "\n")
        atomic_write_text(self.out / "gpu_session.md", self.render())

    def render(self) -> str:
        s = self.results["session"]
        lines = [f"# xnorpipe GPU session{' (dry run, CPU)' if self.dry_run else ''}", "",
                 f"- started {s['started']}, {s.get('elapsed_s', 0)} s of a {s['budget_s']:.0f} s budget",
                 f"- {s.get('environment', '')}", f"- data: `{s.get('data')}`", ""]
        lines += ["| part | status | seconds |", "|---|---|---:|"]
        for name, p in self.results["parts"].items():
            lines.append(f"| {name} | {p['status']} | {p.get('seconds', '')} |")
        farm = s.get("compile_farm")
        if farm:
            lines += ["", f"Compile farm ({farm['status']}): {farm['compiled']} of {farm['submitted']} kernel "
                          f"configurations compiled ahead ({farm['failed']} failed; {farm['compile_s']} s compiling)"]
        lines.append("")
        verdict = "PASSED" if self.results.get("passed") else "FAILED"
        lines.append(f"**{verdict}**" + "".join(f"\n- {f}" for f in self.results["failures"]))
        for text in self.markdown.values():
            lines += ["", text.rstrip()]
        return "\n".join(lines) + "\n"

    def part(self, name: str, title: str, fn, share: float, *args) -> object:
        """Run part `fn(self, deadline, *args) -> (result dict, markdown)` within `share` of
        the time left; record it; write the files."""
        budget = max(0.0, self.left() * share)
        if self.left() < 5:
            self.results["parts"][name] = {"status": "skipped", "reason": "no time left"}
            self.write()
            return None
        self.log(f"=== {title} (budget {budget:.0f} s)")
        t = time.monotonic()
        entry: dict = {"status": "running"}
        self.results["parts"][name] = entry
        try:
            result, md = fn(self, time.monotonic() + budget, *args)
            entry.update(status=result.pop("_status", "ok"), result=result)
            self.markdown[name] = f"## {title}\n\n{md}"
            return result
        except KeyboardInterrupt:
            entry.update(status="interrupted")
            self.fail(f"{name}: interrupted by the time limit")
            raise
        except Exception as e:  # noqa: BLE001  a part's crash is reported, the session goes on
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            entry.update(status="crashed", error=f"{type(e).__name__}: {text}", traceback=traceback.format_exc())
            self.markdown[name] = f"## {title}\n\n**crashed**: `{type(e).__name__}: {text[:300]}`"
            self.fail(f"{name} crashed: {type(e).__name__}: {text}")
            print(traceback.format_exc(), flush=True)
            return None
        finally:
            entry["seconds"] = round(time.monotonic() - t, 1)
            self.write()


# -------------------------------------------------------------------------- utilities


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def environment(s: Session) -> str:
    import torch

    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    for mod in ("triton", "cupy", "onnxruntime"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except Exception as e:  # noqa: BLE001  absent or broken: say which
            parts.append(f"{mod} unavailable ({type(e).__name__})")
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        parts.insert(0, f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}, CUDA {torch.version.cuda})")
    else:
        parts.insert(0, f"CPU only ({os.cpu_count()} cores)")
    s.results["session"]["nvcc"] = shutil.which("nvcc")
    return ", ".join(parts)


def start_cuda_build(s: Session) -> None:
    """nvcc + ptxas for the CUDA kernel, as plugins/cuda/CMakeLists.txt builds it, in the
    background (CPU work while the GPU runs part a)."""
    nvcc = shutil.which("nvcc") or next((str(p) for p in (Path(os.environ.get("CUDA_HOME", "/nonexistent"), "bin",
                                                                "nvcc"), Path("/usr/local/cuda/bin/nvcc"))
                                         if p.is_file()), None)
    if nvcc is None:
        s.results["session"]["cuda_build"] = "nvcc not found: the CUDA kernel is not built"
        return
    ptxas = str(Path(nvcc).with_name("ptxas"))
    out = s.work / "cuda"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    src = ROOT / "plugins" / "cuda" / "xnor_conv2d.cu"
    steps = " & ".join(
        f"({nvcc} -ptx -arch=compute_{a} -O3 -std=c++17 -o {out}/xnor_conv2d.sm_{a}.ptx {src} && "
        f"{ptxas} -arch=sm_{a} -O3 -o {out}/xnor_conv2d.sm_{a}.cubin {out}/xnor_conv2d.sm_{a}.ptx)"
        for a in s.plan.cuda_archs)
    s.cuda_build = subprocess.Popen(["bash", "-c", f"set -e; {steps} & wait"], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
    s.results["session"]["cuda_build"] = f"building sm_{{{','.join(map(str, s.plan.cuda_archs))}}} in {out}"


def wait_cuda_build(s: Session, timeout: float) -> Path | None:
    """The folder of the built kernels, or None (the reason goes to the session record)."""
    if s.cuda_build is None:
        return None
    try:
        log, _ = s.cuda_build.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        s.cuda_build.kill()
        s.results["session"]["cuda_build"] = "nvcc did not finish in time"
        return None
    out = s.work / "cuda"
    built = [a for a in s.plan.cuda_archs if (out / f"xnor_conv2d.sm_{a}.cubin").is_file()]
    if s.cuda_build.returncode != 0 or len(built) != len(s.plan.cuda_archs):
        s.results["session"]["cuda_build"] = f"FAILED (exit {s.cuda_build.returncode}): {log.strip()[-500:]}"
        s.fail("the CUDA kernel did not build with nvcc")
        return None
    s.results["session"]["cuda_build"] = f"built sm_{{{','.join(map(str, built))}}} PTX and cubin"
    os.environ["XNORPIPE_CUDA_DIR"] = str(out)  # where xnorpipe.native finds them
    return out


# ------------------------------------------------------------------------- compile farm


def spec_key(spec) -> tuple:
    """What Triton compiles once: a kernel with its constexprs and compile options (the int32
    scalars are runtime arguments)."""
    return spec.kernel, tuple(sorted(spec.constexprs.items())), spec.num_warps, spec.num_stages


def _farm_start() -> None:
    """A worker's first act: load the kernel modules while it waits for jobs."""
    from xnorpipe.gpu import triton_kernels as tk

    tk.kernels(False)


def _farm_compile(spec, device: str) -> tuple[float, str | None]:
    """One compile in a worker: (seconds, None) or (seconds, the error's first line). On the CPU
    (the dry run) there is nothing to compile (the interpreter runs the kernels as Python): the
    interpreter's kernel module is loaded instead, so the dry run runs the farm's machinery."""
    t = time.monotonic()
    try:
        from xnorpipe.gpu import triton_kernels as tk

        if device == "cuda":
            tk.warmup(spec, device)
        else:
            tk.kernels(True)
        return time.monotonic() - t, None
    except Exception as e:  # noqa: BLE001  a configuration that does not compile: reported
        return time.monotonic() - t, f"{type(e).__name__}: {_first_line(e)}"


class CompileFarm:
    """Worker processes (spawned, so no CUDA state is shared) that compile kernel configurations
    into Triton's on-disk cache (triton_kernels.warmup), in the order they are submitted, ahead
    of the session's launches of them. Only time depends on it: a launch whose configuration is
    not compiled yet compiles it itself."""

    def __init__(self, device: str, workers: int):
        self.device = device
        self.jobs: dict = {}
        self.pool = None
        self.status = "off"
        if workers < 1:
            return
        import multiprocessing

        try:
            self.pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_farm_start)
            self.status = f"{workers} worker process{'es' if workers > 1 else ''}" + (
                "" if device == "cuda" else " (the interpreter: nothing to compile)")
        except Exception as e:  # noqa: BLE001  no farm: the launches compile
            self.status = f"not started: {_first_line(e)}"

    def submit(self, specs) -> None:
        for spec in specs:
            key = spec_key(spec)
            if self.pool is not None and key not in self.jobs:
                self.jobs[key] = self.pool.apply_async(_farm_compile, (spec, self.device))

    def wait(self, spec, deadline: float) -> str | None:
        """Wait, until `deadline` at most, for the compile of spec's configuration; the error's
        first line if it failed, else None (also when the farm does not have it)."""
        job = self.jobs.get(spec_key(spec))
        if job is None:
            return None
        job.wait(max(0.0, deadline - time.monotonic()))
        return job.get()[1] if job.ready() and job.successful() else None

    def summary(self) -> dict:
        done = [j.get() for j in self.jobs.values() if j.ready() and j.successful()]
        failed = [err for _, err in done if err]
        return {"status": self.status, "submitted": len(self.jobs), "compiled": len(done) - len(failed),
                "failed": len(failed), "compile_s": round(sum(t for t, _ in done), 1), "first_errors": failed[:3]}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
            self.status += ", closed"


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, plan: Plan, graph: bool = True, iters: int | None = None,
          reps: int | None = None) -> tuple[float, str]:
    """Median microseconds per call of fn(): CUDA events over `iters` calls per sample (one graph
    replay of `iters` captured calls when `graph` and capture works), `reps` samples (default
    the plan's) after `plan.warmup` calls; on the CPU, perf_counter."""
    import torch

    iters, reps = iters or plan.iters, reps or plan.reps
    for _ in range(plan.warmup):
        fn()
    sync(device)
    if device != "cuda":
        samples = []
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            samples.append((time.perf_counter() - t) / iters * 1e6)
        return statistics.median(samples), "cpu"
    g = None
    if graph:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(iters):
                    fn()
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001  not capturable: time eagerly, and say so
            g = None
            torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        if g is not None:
            g.replay()
        else:
            for _ in range(iters):
                fn()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b) * 1000.0 / iters)
    return statistics.median(samples), ("graph" if g is not None else "eager")


def conv_precision(mode: str):
    from xnorpipe.gpu.onnx_runner import conv_precision as precision

    return precision(mode)


# ------------------------------------------------------------------------- a. exactness


def exactness_checks(s: Session) -> list:
    """Part a's checks, (case, algo, launch spec), built once: nin_xnornet's own layers, then the
    interpreter tests' random cases; every convolution with both algorithms."""
    from xnorpipe.gpu import kernel_cases as kc
    from xnorpipe.gpu import triton_kernels as tk

    if s.cases is None:
        cases = kc.layer_cases()[:s.plan.layer_cases] + kc.random_cases(s.plan.random_cases, CASES_SEED)
        s.cases = []
        for case in cases:
            for algo in tk.ALGOS if case.op in tk.CONV_OPS else (None,):
                try:
                    spec = kc.case_launch_spec(case, interpret=s.plan.device != "cuda", algo=algo)
                except Exception:  # noqa: BLE001  run_case reports it
                    spec = None
                s.cases.append((case, algo, spec))
    return s.cases


def part_exactness(s: Session, deadline: float):
    from xnorpipe.gpu import kernel_cases as kc

    dev = s.plan.device
    checks = exactness_checks(s)
    cases = list({id(c): c for c, _, _ in checks}.values())
    triton = {"checked": 0, "failed": 0, "of": len(checks), "cases": len(cases), "first_failures": [],
              "by_algo": {}}
    triton_deadline = time.monotonic() + 0.7 * (deadline - time.monotonic())  # the rest: the CUDA kernel
    for case, algo, spec in checks:
        if time.monotonic() > triton_deadline:
            break
        if spec is not None and s.farm is not None:
            s.farm.wait(spec, triton_deadline)  # compiled ahead, else compiled by this launch
        ok, detail = kc.run_case(case, dev, algo=algo)
        by = triton["by_algo"].setdefault(algo or "one kernel", {"checked": 0, "failed": 0})
        triton["checked"] += 1
        by["checked"] += 1
        if not ok:
            triton["failed"] += 1
            by["failed"] += 1
            if len(triton["first_failures"]) < 5:
                triton["first_failures"].append(detail)
    if triton["failed"] or not triton["checked"]:
        s.fail(f"exactness: {triton['failed']} of {triton['checked']} Triton checks differ from the reference")
    s.log(f"Triton: {triton['checked']} of {triton['of']} checks, {triton['failed']} failed")

    cuda: dict = {"checked": 0, "failed": 0, "first_failures": []}
    kernel_dir = wait_cuda_build(s, deadline - time.monotonic())
    if kernel_dir is None:
        cuda["status"] = f"not run: {s.results['session'].get('cuda_build')}"
    elif dev != "cuda":
        cuda["status"] = f"built in {kernel_dir}; not run: no GPU (dry run)"
    else:
        cuda.update(_cuda_kernel_cases(s, kernel_dir, [c for c in cases if c.op == "XnorConv2d"], deadline))
        if cuda["failed"] or not cuda["checked"]:
            s.fail(f"exactness: {cuda['failed']} of {cuda['checked']} CUDA-kernel checks differ from the reference")
    ran = (f"{triton['checked']} of {triton['of']} checks ({triton['of'] - triton['checked']} not run: part budget "
           "spent)" if triton["checked"] < triton["of"] else f"{triton['of']} checks")
    md = [(f"{ran}: {len(cases)} cases (kernel_cases.layer_cases, then random_cases({s.plan.random_cases}, "
           f"{CASES_SEED}) as in the interpreter tests), the convolutions with both algorithms, on `{dev}`, compared "
           "bit for bit with xnorpipe.deploy.reference; the CUDA kernel on the XnorConv2d cases among them."), "",
          "| kernels | checks | failed |", "|---|---:|---:|"]
    for algo, by in triton["by_algo"].items():
        label = f"Triton convolutions, {algo}" if algo != "one kernel" else "Triton BitMaxPool, Binarize"
        md.append(f"| {label} | {by['checked']} | {by['failed']} |")
    for label, (n, bad) in cuda.get("variants", {}).items():
        md.append(f"| CUDA {label} | {n} | {bad} |")
    if "status" in cuda:
        md.append(f"\nCUDA kernel: {cuda['status']}")
    if cuda.get("refused"):
        md.append(f"\nCUDA kernel: {len(cuda['refused'])} launches refused with a one-line error (documented "
                  f"limits), e.g. `{cuda['refused'][0][:300]}`")
    for f in triton["first_failures"] + cuda["first_failures"]:
        md.append(f"- `{f[:400]}`")
    return {"triton": triton, "cuda_kernel": cuda}, "\n".join(md)


def _cuda_kernel_cases(s: Session, kernel_dir: Path, cases, deadline: float) -> dict:
    """The hand-written kernel on the XnorConv2d cases: mma and popc paths from the cubin, and
    the PTX-JIT forms (what TensorRT's AOT plugin loads; the sm_75 PTX is what sm_100+ loads)."""
    import torch

    from xnorpipe.errors import XnorpipeError
    from xnorpipe.gpu import kernel_cases as kc
    from xnorpipe.runtime.torch_xnor import CudaKernels, xnor_conv2d_cuda

    index = torch.cuda.current_device()
    cap = torch.cuda.get_device_capability()
    cc = cap[0] * 10 + cap[1]
    default = CudaKernels(index)
    paths = ["mma", "popc"] if 80 <= cc < 100 else ["popc"]
    variants = [(p, default) for p in paths]
    ptx = CudaKernels(index, arch=default.arch, fmt="ptx")
    variants += [(p, ptx) for p in paths]
    if default.arch != 75:
        variants.append(("popc", CudaKernels(index, arch=75, fmt="ptx")))
    stats: dict[str, list[int]] = {}
    out = {"checked": 0, "failed": 0, "first_failures": [], "refused": []}
    for case in cases:
        if time.monotonic() > deadline:
            break
        i, a = case.inputs, case.attrs
        want = kc.reference_output(case)
        x = torch.from_numpy(np.ascontiguousarray(i["X"])).cuda()
        for path, mod in variants:
            label = f"{path} ({Path(mod.path).name})"
            try:
                y = xnor_conv2d_cuda(x, i["W"], i["threshold"], i["scale"], i["bias"], a["strides"], a["pads"],
                                     a["dilations"], a["group"], a["relu"], kernel=path, kernels=mod)
            except XnorpipeError as e:  # a documented limit (e.g. shared memory): refused, not wrong
                out["refused"].append(f"{case.describe()}: {e.message}")
                continue
            ok, detail = kc.compare(y.cpu().numpy(), want)
            st = stats.setdefault(label, [0, 0])
            st[0] += 1
            out["checked"] += 1
            if not ok:
                st[1] += 1
                out["failed"] += 1
                if len(out["first_failures"]) < 5:
                    out["first_failures"].append(f"{label}: {case.describe()}: {detail}")
    out["variants"] = stats
    return out


# ---------------------------------------------------------------------------- b. parity


def load_source(s: Session, checkpoint: Path | None):
    """(training model in eval mode, its deploy IR, a description), loaded once per session."""
    from xnorpipe.deploy.fold import fold_model
    from xnorpipe.sources import load_source_model

    key = str(checkpoint) if checkpoint is not None and checkpoint.is_file() else None
    if key not in s.sources:
        if key is not None:
            model, meta = load_source_model(ARCH, checkpoint=checkpoint)
            what = f"checkpoint {checkpoint.name}"
        else:
            model, meta = load_source_model(ARCH, random_init=True, data=s.data)
            what = "random init, BatchNorm calibrated on training images"
        s.sources[key] = (model.eval(), fold_model(model, arch=ARCH, metadata=meta), what)
        if s.farm is not None:  # the network's kernels, then part c's, compile while the parts run
            s.farm.submit(network_specs(s, s.sources[key][1]))
    return s.sources[key]


def test_images(s: Session, limit: int | None):
    import torch

    from xnorpipe.data import load_cifar10, normalize, to_tensor

    d = load_cifar10(s.data, progress=False)
    images, labels = d.test_images, d.test_labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return normalize(to_tensor(images, s.plan.device)), torch.from_numpy(np.asarray(labels)).to(s.plan.device)


def batched(fn, x, batch: int):
    import torch

    with torch.inference_mode():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def part_parity(s: Session, deadline: float, checkpoint: Path | None = None):
    from xnorpipe.deploy.module import DeployModule
    from xnorpipe.runtime.torch_xnor import TorchXnorEngine

    dev, plan = s.plan.device, s.plan
    model, ir, source = load_source(s, checkpoint)
    x, labels = test_images(s, plan.parity_images)
    s.log(f"parity: {source}, {x.shape[0]} test images")
    with conv_precision("ieee"):
        ref = batched(model.to(dev), x, plan.parity_batch)
        oracle = batched(DeployModule(ir).to(dev), x, plan.parity_batch)
    rows = [("deploy module (PyTorch, the oracle of every runtime)", oracle)]
    variants = [("packed", "triton"), ("packed-bits", "triton")]
    if dev == "cuda":
        variants.append(("packed", "cuda"))
    notes = []
    for form, kernels in variants:
        if time.monotonic() > deadline:
            notes.append(f"torch-xnor {form} ({kernels}): skipped, part budget spent")
            continue
        try:
            eng = TorchXnorEngine(onnx_path=None, model=ir, form=form, gpu_kernels=kernels, device=dev)
        except Exception as e:  # e.g. no CuPy for the CUDA kernel: reported, not fatal
            if kernels == "cuda":
                notes.append(f"torch-xnor {form} (cuda kernel): not run: {_first_line(e)}")
                continue
            raise
        rows.append((f"torch-xnor {form} ({kernels} kernels)", batched(eng.forward, x, plan.parity_batch)))
        del eng
    result = {"source": source, "images": int(x.shape[0]), "rows": []}
    md = [(f"{ARCH} ({source}) on {x.shape[0]} CIFAR-10 test images, `{dev}`; reference: the PyTorch model "
          "(float convolutions in IEEE FP32). Contract: agreement >= 99.9 %, median |d| <= 1e-4."), "",
          "| engine | top-1 % | agreement % | median abs diff | max abs diff |", "|---|---:|---:|---:|---:|",
          f"| PyTorch model (reference) | {(ref.argmax(1) == labels).float().mean().item() * 100:.2f} | - | - | - |"]
    spread = float((ref - ref.mean(0)).abs().max())
    if spread < 1e-3:
        s.fail("parity: the reference logits do not depend on the input: the comparison proves nothing")
    for label, y in rows:
        diff = (y.double() - ref.double()).abs()
        row = {"engine": label, "top1": (y.argmax(1) == labels).float().mean().item() * 100,
               "agreement": (y.argmax(1) == ref.argmax(1)).float().mean().item() * 100,
               "median_abs_diff": diff.median().item(), "max_abs_diff": diff.max().item()}
        result["rows"].append(row)
        md.append(f"| {label} | {row['top1']:.2f} | {row['agreement']:.2f} | {row['median_abs_diff']:.2e} | "
                  f"{row['max_abs_diff']:.2e} |")
        if row["agreement"] < AGREEMENT_MIN or row["median_abs_diff"] > MEDIAN_DIFF_MAX:
            s.fail(f"parity ({source}): {label}: agreement {row['agreement']:.2f} %, median |d| "
                   f"{row['median_abs_diff']:.2e}")
    if len(rows) < 3:
        s.fail("parity: a torch-xnor form did not run")
    md += [f"- {n}" for n in notes]
    return result, "\n".join(md)


# --------------------------------------------------------------------------- c. timings


# The dot algorithm's tile sweep (part c): every combination of these `config=` entries.
SWEEP = {"BLOCK_M": (64, 128), "BLOCK_P": (64, 128, 256), "BLOCK_K": (1, 2, 4), "num_warps": (4, 8),
         "num_stages": (1, 2, 3)}
SWEEP_FIRST = {"BLOCK_M": 64, "BLOCK_P": 128, "BLOCK_K": 2, "num_warps": 4, "num_stages": 2}  # the table's usual
SWEEP_OPS = ("XnorConv2d", "XnorConv2dBitsBinarize")  # the packed and the packed-bits form's op


def sweep_configs(plan: Plan) -> list[dict]:
    """The sweep's configurations, nearest the table's usual dot tile first (fewest entries
    changed), so that a sweep the budget cuts short has tried the likeliest ones."""
    configs = [dict(zip(SWEEP, values)) for values in itertools.product(*SWEEP.values())]
    configs.sort(key=lambda c: (sum(c[k] != SWEEP_FIRST[k] for k in SWEEP), [SWEEP[k].index(c[k]) for k in SWEEP]))
    return configs[:plan.sweep_configs] if plan.sweep_configs else configs


def binary_layers(ir) -> list[tuple[str, object, tuple[int, int, int]]]:
    """(name, layer, input shape C, H, W) of the IR's binary layers: L1, L2, ..."""
    from xnorpipe.deploy import ir as IR

    shapes = IR.tensor_shapes(ir)
    layers = [(n.op, shapes[n.inputs[0]]) for n in ir.nodes if isinstance(n.op, IR.BinaryConv)]
    return [(f"L{n + 1}", layer, chw) for n, (layer, chw) in enumerate(layers)]


def layer_attrs(layer) -> dict:
    return {"strides": tuple(layer.strides), "pads": tuple(layer.pads), "dilations": tuple(layer.dilations),
            "group": layer.group, "relu": bool(layer.relu)}


def layer_spec(s: Session, op: str, layer, chw, config: dict):
    """The launch of `op` on the layer (as the wrappers describe it)."""
    from xnorpipe.deploy.packing import num_words
    from xnorpipe.gpu import triton_kernels as tk

    c, h, w = chw
    common = dict(num_filters=layer.out_channels, kernel_shape=tuple(layer.kernel_shape), config=config,
                  interpret=s.plan.device != "cuda", **layer_attrs(layer))
    if op == "XnorConv2d":
        return tk.launch_spec(op, input_shape=(c, h, w), **common)
    return tk.launch_spec(op, input_shape=(num_words(c), h, w), channels=c, **common)


def network_specs(s: Session, ir) -> list:
    """What parts b and c launch on the network's layers, in that order: each binary layer's
    three conv ops with the table's algorithm, then with the other, Binarize and BitMaxPool on
    their inputs; then the dot sweep's configurations."""
    from xnorpipe.deploy import ir as IR
    from xnorpipe.deploy.packing import num_words
    from xnorpipe.gpu import triton_kernels as tk

    interpret = s.plan.device != "cuda"
    layers = binary_layers(ir)
    specs = []
    for first in (True, False):
        for _, layer, chw in layers:
            table = tk.conv_algo(layer.out_channels, layer.group)
            algo = table if first else next(a for a in tk.ALGOS if a != table)
            specs += [layer_spec(s, op, layer, chw, {"algo": algo}) for op in tk.CONV_OPS]
    shapes = IR.tensor_shapes(ir)
    for _, _, chw in layers:
        specs.append(tk.launch_spec("Binarize", input_shape=chw, interpret=interpret))
    for node in ir.nodes:
        layer = node.op
        if isinstance(layer, IR.MaxPool):
            c, h, w = shapes[node.inputs[0]]
            specs.append(tk.launch_spec("BitMaxPool", input_shape=(num_words(c), h, w), interpret=interpret,
                                        kernel_shape=tuple(layer.kernel_shape), strides=tuple(layer.strides),
                                        pads=tuple(layer.pads)))
    for config in sweep_configs(s.plan):
        for _, layer, chw in layers[:s.plan.timing_layers]:
            specs += [layer_spec(s, op, layer, chw, {"algo": "dot", **config}) for op in SWEEP_OPS]
    return specs


def part_timings(s: Session, deadline: float):
    start = time.monotonic()
    total = deadline - start
    layers, md = _layer_timings(s, start + 0.40 * total)
    sweep, md_sweep = _dot_sweep(s, min(deadline - 0.25 * total, time.monotonic() + 0.35 * total))
    whole, md2 = _whole_timings(s, deadline)
    return {"layers": layers, "sweep": sweep, "whole": whole}, "\n\n".join((md, md_sweep, md2))


class _LayerInputs:
    """One binary layer's tensors at batch b on the device: a float input, its bits, the
    layer's weights and vectors, output thresholds."""

    def __init__(self, s: Session, layer, chw, b: int):
        import torch

        from xnorpipe.gpu import triton_kernels as tk

        dev = s.plan.device
        c, h, w = chw
        self.layer, self.chw, self.attrs = layer, chw, layer_attrs(layer)
        self.x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(b)).to(dev)
        self.wb = torch.from_numpy(np.ascontiguousarray(layer.weight_bits)).to(dev)
        self.thr, self.scale, self.bias = (torch.from_numpy(np.asarray(v, np.float32)).to(dev)
                                           for v in (layer.threshold, layer.scale, layer.bias))
        self.xp = tk.binarize(self.x, self.thr)
        self.out_thr = torch.zeros(layer.out_channels, device=dev)

    def call(self, op: str, config: dict):
        """fn() launching `op` (XnorConv2d float in, or XnorConv2dBitsBinarize) with `config`."""
        from xnorpipe.gpu import triton_kernels as tk

        if op == "XnorConv2d":
            return lambda: tk.xnor_conv2d(self.x, self.wb, self.thr, self.scale, self.bias, config=config,
                                          **self.attrs)
        return lambda: tk.xnor_conv2d_bits(self.xp, self.wb, self.scale, self.bias, channels=self.chw[0],
                                           output_threshold=self.out_thr, config=config, **self.attrs)


def _layer_timings(s: Session, deadline: float):
    import torch

    dev, plan = s.plan.device, s.plan
    torch.backends.cudnn.benchmark = dev == "cuda"
    _, ir, _ = load_source(s, CHECKPOINT if CHECKPOINT.is_file() else None)
    layers = binary_layers(ir)[:plan.timing_layers]
    cuda_mod = None
    if dev == "cuda" and os.environ.get("XNORPIPE_CUDA_DIR"):
        try:
            from xnorpipe.runtime.torch_xnor import cuda_kernels

            cuda_mod = cuda_kernels()
        except Exception as e:  # noqa: BLE001  no CuPy: the table says so
            s.log(f"CUDA kernel not timed: {_first_line(e)}")
    head = ("| layer | batch | float in, popcount | float in, dot | bits, popcount | bits, dot | "
            + ("CUDA kernel | " if cuda_mod else "") + "cuDNN FP32 | cuDNN TF32 | cuDNN FP16 | FP16 / best Triton |")
    md = [("Median us per call (CUDA events; a CUDA graph of repeated calls where capture works), each Triton "
          "kernel with both algorithms (* the tile table's choice, with its tiles). float in = XnorConv2d "
          "(binarize, conv, scale, bias, relu: float32 in and out, the packed form); bits = "
          "XnorConv2dBitsBinarize (bits in, bits out: the packed-bits form). cuDNN = the same convolution alone on "
          "float inputs and +-1 weights."), "", head, "|---|---:|" + "---:|" * (head.count("|") - 3)]
    rows = []
    for b in plan.batches:
        for name, layer, chw in layers:
            if time.monotonic() > deadline:
                md.append(f"| (batch {b} layer {name} on: part budget spent) |")
                break
            row = _time_layer(s, name, layer, chw, b, cuda_mod)
            rows.append(row)
            cells = []
            for kind in ("float_in", "bits"):
                for algo in ("popcount", "dot"):
                    star = "*" if algo == row["table_algo"] else ""
                    cells.append(f"{row[f'triton_{kind}_{algo}_us']:.1f}{star}")
            if cuda_mod is not None:
                cells.append(f"{row['cuda_kernel_us']:.1f}")
            cells.append(f"{row['cudnn_fp32_us']:.1f}")
            cells += [f"{row[k]:.1f}" if k in row else "n/a (CPU)" for k in ("cudnn_tf32_us", "cudnn_fp16_us")]
            best = min(row[f"triton_{kind}_{algo}_us"] for kind in ("float_in", "bits") for algo in ("popcount", "dot"))
            cells.append(f"{row['cudnn_fp16_us'] / best:.2f}x" if "cudnn_fp16_us" in row else "-")
            md.append(f"| {row['layer']} | {b} | " + " | ".join(cells) + " |")
            s.log(f"layer {row['layer']} batch {b}: {cells}")
    return rows, "\n".join(md)


def _time_layer(s: Session, name: str, layer, chw, b: int, cuda_mod) -> dict:
    """One binary layer at batch b: the Triton kernels (float in; bits in and out), each with
    both algorithms and the table's tiles for it, the CUDA kernel when loaded, cuDNN on the
    same float convolution in FP32, TF32 and FP16."""
    import torch
    import torch.nn.functional as F

    from xnorpipe.deploy.packing import unpack_weights
    from xnorpipe.gpu import triton_kernels as tk

    dev, plan = s.plan.device, s.plan
    c, h, w = chw
    t = _LayerInputs(s, layer, chw, b)
    a = t.attrs
    row = {"layer": f"{name} {c}->{layer.out_channels} k{layer.kernel_shape[0]} @{h}x{w}", "batch": b,
           "table_algo": tk.conv_algo(layer.out_channels, layer.group)}
    for algo in tk.ALGOS:
        row[f"triton_float_in_{algo}_us"], row["timing"] = timed(t.call("XnorConv2d", {"algo": algo}), dev, plan)
        row[f"triton_bits_{algo}_us"], _ = timed(t.call("XnorConv2dBitsBinarize", {"algo": algo}), dev, plan)
    if cuda_mod is not None:
        from xnorpipe.runtime.torch_xnor import xnor_conv2d_cuda

        row["cuda_kernel_us"], _ = timed(lambda: xnor_conv2d_cuda(t.x, t.wb, t.thr, t.scale, t.bias, a["strides"],
                                                                  a["pads"], a["dilations"], a["group"], a["relu"],
                                                                  kernels=cuda_mod), dev, plan)
    wf = torch.from_numpy(unpack_weights(layer.weight_bits, c // layer.group)).to(dev)
    top, left, bottom, right = layer.pads
    sym = (top, left) == (bottom, right)
    xf = t.x if sym else F.pad(t.x, (left, right, top, bottom))
    pad = (top, left) if sym else 0

    def conv(xi, wi):
        return F.conv2d(xi, wi, None, layer.strides, pad, layer.dilations, layer.group)
    with conv_precision("ieee"):
        row["cudnn_fp32_us"], _ = timed(lambda: conv(xf, wf), dev, plan)
    if dev == "cuda":
        with conv_precision("tf32"):
            row["cudnn_tf32_us"], _ = timed(lambda: conv(xf, wf), dev, plan)
        xh = xf.half().to(memory_format=torch.channels_last)
        wh = wf.half().to(memory_format=torch.channels_last)
        row["cudnn_fp16_us"], _ = timed(lambda: conv(xh, wh), dev, plan)
    return row


def _config_label(config: dict) -> str:
    return "M{BLOCK_M} P{BLOCK_P} K{BLOCK_K} w{num_warps} s{num_stages}".format(**config)


def _dot_sweep(s: Session, deadline: float):
    """The dot algorithm's tiles per binary layer and op at one batch: each configuration of
    `sweep_configs` on every layer before the next configuration, until the deadline; the best
    per layer and op against the table's own tiles."""
    dev, plan = s.plan.device, s.plan
    _, ir, _ = load_source(s, CHECKPOINT if CHECKPOINT.is_file() else None)
    b = plan.sweep_batch
    layers = [(name, _LayerInputs(s, layer, chw, b)) for name, layer, chw in binary_layers(ir)[:plan.timing_layers]]
    configs = sweep_configs(plan)
    rows, not_run, tried = [], {}, 0
    for config in configs:
        if time.monotonic() > deadline:
            break
        tried += 1
        for name, t in layers:
            for op in SWEEP_OPS:
                label = f"{op} {_config_label(config)}"
                if time.monotonic() > deadline or label in not_run:
                    continue
                cfg = {"algo": "dot", **config}
                try:
                    if s.farm is not None:  # a failed farm compile is tried here again: the farm may be what failed
                        s.farm.wait(layer_spec(s, op, t.layer, t.chw, cfg), deadline)
                    us, _ = timed(t.call(op, cfg), dev, plan, iters=plan.sweep_iters, reps=plan.sweep_reps)
                except Exception as e:  # noqa: BLE001  a configuration that does not compile or launch
                    not_run[label] = _first_line(e)[:300]
                    continue
                rows.append({"layer": name, "op": op, **config, "us": us})
    best = []
    md = [(f"The dot algorithm at batch {b}: {tried} of {len(configs)} configurations "
           f"({' x '.join(f'{k} {list(v)}' for k, v in SWEEP.items())}, nearest the table's usual "
           f"{_config_label(SWEEP_FIRST)} first) on every layer, median us per call ({plan.sweep_reps} samples of "
           f"{plan.sweep_iters} calls). Best per layer and op against the table's own dot tiles: what the tile "
           "table (triton_kernels._conv_config) should say."), "",
          "| layer | op | table's tiles | us | best tiles | us | table / best |", "|---|---|---|---:|---|---:|---:|"]
    for name, t in layers:
        for op in SWEEP_OPS:
            mine = [r for r in rows if r["layer"] == name and r["op"] == op]
            if not mine:
                continue
            top = min(mine, key=lambda r: r["us"])
            table_cfg = layer_spec(s, op, t.layer, t.chw, {"algo": "dot"}).config()
            table = next((r for r in mine if all(r[k] == table_cfg[k] for k in SWEEP)), None)
            entry = {"layer": name, "op": op, "best": {k: top[k] for k in SWEEP}, "best_us": top["us"],
                     "table": {k: table_cfg[k] for k in SWEEP}, "table_us": table["us"] if table else None}
            best.append(entry)
            ratio = f"{table['us'] / top['us']:.2f}x" if table else "-"
            table_us = f"{table['us']:.1f}" if table else "not tried"
            md.append(f"| {name} | {op} | {_config_label(entry['table'])} | {table_us} | "
                      f"{_config_label(entry['best'])} | {top['us']:.1f} | {ratio} |")
    if not_run:
        md.append(f"\n{len(not_run)} layer-configurations did not compile or launch, e.g. "
                  f"`{next(iter(not_run))}: {next(iter(not_run.values()))}`")
    result = {"batch": b, "configs": len(configs), "tried": tried, "rows": rows, "best": best,
              "not_run": not_run}
    return result, "\n".join(md)


def _whole_timings(s: Session, deadline: float):
    import torch

    from xnorpipe.deploy.module import DeployModule
    from xnorpipe.runtime.torch_xnor import TorchXnorEngine

    dev, plan = s.plan.device, s.plan
    _, ir, source = load_source(s, CHECKPOINT if CHECKPOINT.is_file() else None)
    md = [(f"Whole {ARCH} ({source}), normalised float32 input on the device -> logits, median us per batch. "
          "torch-xnor = the engine's `forward` (one CUDA graph replay per call, or eager launches); the float "
          "graph = the deploy module (sign + cuDNN convolutions on +-1 weights) in FP32, TF32 and FP16, "
          "captured in a CUDA graph."), "", "| batch | engine | us | images/s | timing |", "|---:|---|---:|---:|---|"]
    variants = {"packed-bits": {"form": "packed-bits"}, "packed": {"form": "packed"},
                "packed-bits eager": {"form": "packed-bits", "cuda_graphs": False},
                "packed cuda": {"form": "packed", "gpu_kernels": "cuda"}}
    engines = {}
    for name in plan.whole_engines:
        try:
            engines[f"torch-xnor {name}"] = TorchXnorEngine(model=ir, device=dev, **variants[name])
        except Exception as e:  # noqa: BLE001  e.g. no CuPy for the CUDA kernel: reported, not fatal
            md.append(f"| - | torch-xnor {name} | not run: {_first_line(e)} | | |")
    float32 = DeployModule(ir).to(dev).eval()
    float16 = DeployModule(ir).to(dev).half().eval() if dev == "cuda" else None
    rows = []
    for b in plan.batches:
        if time.monotonic() > deadline:
            md.append(f"| {b} | (part budget spent) | | | |")
            continue
        x = torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b)).to(dev)
        runs = [(label, lambda e=e, x=x: e.forward(x), None, e.cuda_graphs) for label, e in engines.items()]
        runs.append(("float graph, cuDNN FP32", lambda x=x: float32(x), "ieee", True))
        if float16 is not None:
            xh = x.half()
            runs += [("float graph, cuDNN TF32", lambda x=x: float32(x), "tf32", True),
                     ("float graph, cuDNN FP16", lambda xh=xh: float16(xh), "ieee", True)]
        with torch.inference_mode():
            for label, fn, precision, graphs in runs:
                with conv_precision(precision) if precision else contextlib.nullcontext():
                    # the engines replay their own graphs; the float graph is captured here
                    us, how = timed(fn, dev, plan, graph=precision is not None, iters=max(1, plan.iters // 4))
                if precision is None:
                    how = "graph replay" if graphs else ("eager" if dev == "cuda" else "cpu")
                rows.append({"batch": b, "engine": label, "us": us, "images_per_s": b * 1e6 / us, "timing": how})
                md.append(f"| {b} | {label} | {us:.1f} | {b * 1e6 / us:,.0f} | {how} |")
                s.log(f"network batch {b} {label}: {us:.1f} us ({how})")
    return rows, "\n".join(md)


# -------------------------------------------------------------------------- d. training


def train_has_time_limit() -> bool:
    from xnorpipe.commands.train import train

    return any("--time-limit" in p.opts for p in train.params)


def part_training(s: Session, deadline: float):
    out = s.work / "train"
    shutil.rmtree(out, ignore_errors=True)
    budget = deadline - time.monotonic()
    limit = max(10, int(budget - (15 if s.dry_run else 45)))  # startup, data, the last evaluation
    cmd = [sys.executable, "-m", "xnorpipe.cli", "train", "--arch", ARCH, "--data", str(s.data), "-o", str(out),
           "--no-plot", "-q", *s.plan.train_args]
    graceful = train_has_time_limit()
    if graceful:
        cmd += ["--time-limit", str(limit)]
    s.log("xnorpipe " + " ".join(cmd[3:]))
    t = time.monotonic()
    with open(s.work / "train.out", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=max(5.0, deadline - time.monotonic() - 5))
        except subprocess.TimeoutExpired:
            proc.terminate()  # train stops like Ctrl-C on SIGTERM: the last finished epoch is saved
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    wall = time.monotonic() - t
    records = []
    jsonl = out / f"cifar10_{ARCH}_log.jsonl"
    if jsonl.is_file():
        records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    best = out / f"cifar10_{ARCH}_best.pth.tar"
    result = {"command": " ".join(cmd[3:]), "exit_code": proc.returncode, "wall_s": round(wall, 1),
              "time_limit_flag": graceful, "epochs": len(records),
              "best_top1": max((r["test_top1"] for r in records), default=None),
              "images_per_s": statistics.median([r["images_per_s"] for r in records]) if records else None,
              "epoch_seconds": statistics.median([r["seconds"] for r in records]) if records else None,
              "checkpoint": None}
    if best.is_file():
        shutil.copy2(best, s.out / best.name)
        shutil.copy2(jsonl, s.out / jsonl.name)
        result["checkpoint"] = str(s.out / best.name)
    tail = (s.work / "train.out").read_text(errors="replace").strip().splitlines()[-3:]
    how = "capped by --time-limit" if graceful else "capped by SIGTERM: train has no --time-limit"
    md = [f"`xnorpipe {result['command']}`", "",
          f"- {result['epochs']} epoch(s) in {result['wall_s']} s (exit {proc.returncode}, {how})",
          (f"- training throughput (median per epoch): {result['images_per_s']} images/s, "
           f"{result['epoch_seconds']} s per epoch"),
          f"- best test top-1: {result['best_top1']} %",
          f"- checkpoint: `{best.name if best.is_file() else 'none'}` (copied to the output folder)"]
    if not records:
        md.append("- last output: `" + " | ".join(tail)[:400] + "`")
        result["_status"] = "failed"
        s.fail("training: no epoch finished")
    return result, "\n".join(md)


# ------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("XNORPIPE_DATA") or str(ROOT.parent / "shared" / "data" /
                                                                              "cifar10-jpeg.tar.gz"),
                    help="CIFAR-10 (any form `xnorpipe --data` takes)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "build" / "gpu_session" / "out"),
                    help="folder for gpu_session.json/.md and the trained checkpoint [$OUT]")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole session "
                    "[500; dry run 240]")
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny sizes")
    ap.add_argument("--work", default=None, help="scratch folder (CUDA build, training run) "
                    "[build/gpu_session, dry run build/gpu_session_dry]")
    args = ap.parse_args(argv)

    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget if args.budget is not None else (240.0 if args.dry_run else 500.0)
    work = Path(args.work) if args.work else ROOT / "build" / ("gpu_session_dry" if args.dry_run else "gpu_session")
    s = Session(out, budget, plan, args.dry_run, args.data, work)
    s.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XNORPIPE_CACHE", str(ROOT / "build" / "gpu_session" / "cache"))
    shares = dict(plan.budgets)
    try:
        import torch

        if not args.dry_run and not torch.cuda.is_available():
            s.results["session"]["environment"] = environment(s)
            s.fail("no CUDA GPU: torch.cuda.is_available() is False (use --dry-run on a CPU)")
            s.write()
            return 1
        s.results["session"]["environment"] = environment(s)
        s.log(s.results["session"]["environment"])
        if not Path(str(args.data)).exists():
            s.fail(f"CIFAR-10 data not found: {args.data} (--data)")
        start_cuda_build(s)
        s.farm = CompileFarm(plan.device, max(0, min(plan.compile_workers, (os.cpu_count() or 1) - 4))
                             if not args.dry_run else plan.compile_workers)
        s.farm.submit(spec for _, _, spec in exactness_checks(s) if spec is not None)
        s.write()
        s.part("exactness", "a. Kernel exactness", part_exactness, shares["exactness"])
        s.part("parity", f"b. {ARCH} parity", part_parity, shares["parity"],
               CHECKPOINT if CHECKPOINT.is_file() else None)
        s.part("timings", "c. Timings", part_timings, shares["timings"])
        s.farm.close()  # its CPUs go to training
        trained = s.part("training", "d. Training (seed recipe, wall-clock cap)", part_training, shares["training"])
        if trained and trained.get("checkpoint"):
            s.part("parity_trained", f"b2. {ARCH} parity on the checkpoint of part d", part_parity,
                   shares["parity_trained"], Path(trained["checkpoint"]))
        else:
            s.results["parts"]["parity_trained"] = {"status": "skipped", "reason": "part d wrote no checkpoint"}
    except KeyboardInterrupt:
        s.log("interrupted: writing what was measured")
    finally:
        if s.cuda_build is not None and s.cuda_build.poll() is None:
            s.cuda_build.kill()
        if s.farm is not None:
            s.farm.close()
        s.write()
    s.log(f"{'PASSED' if s.results['passed'] else 'FAILED'}; wrote {out / 'gpu_session.json'} and .md")
    return 0 if s.results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
