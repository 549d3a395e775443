"""scripts/gpu_session.sh, the GPU harness, in its CPU dry run: every part runs (Triton's
interpreter, a few images, one short epoch, float timings on the CPU), its checks pass, and the
JSON and markdown reports are written, also when the time budget cuts the session short."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = {"exactness", "parity", "timings", "training", "parity_trained"}

pytest.importorskip("triton", reason="the session's kernels are Triton kernels")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, train_tree):
    """One dry run on the synthetic CIFAR-10 tree (300 training, 100 test images)."""
    tmp = tmp_path_factory.mktemp("session")
    out = tmp / "out"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), "--dry-run", "--data", str(train_tree.path),
                        "--out", str(out), "--work", str(tmp / "work")], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, check=False)
    return r, out


def test_dry_run_runs_every_part_and_passes(dry_run):
    r, out = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    report = json.loads((out / "gpu_session.json").read_text())
    assert report["passed"] and report["failures"] == []
    assert report["session"]["dry_run"] is True
    assert set(report["parts"]) == PARTS
    assert {name: p["status"] for name, p in report["parts"].items()} == dict.fromkeys(PARTS, "ok")

    exact = report["parts"]["exactness"]["result"]
    assert exact["triton"]["checked"] == exact["triton"]["of"] > 0 and exact["triton"]["failed"] == 0
    by_algo = exact["triton"]["by_algo"]  # every convolution case with both algorithms
    assert by_algo["popcount"]["checked"] == by_algo["dot"]["checked"] > 0
    farm = report["session"]["compile_farm"]  # its machinery runs in the dry run too (nothing to compile)
    assert farm["submitted"] >= exact["triton"]["of"] // 2 and farm["compiled"] == farm["submitted"]
    for part in ("parity", "parity_trained"):
        rows = report["parts"][part]["result"]["rows"]
        engines = [row["engine"] for row in rows]
        assert any("packed-bits (triton" in e for e in engines) and any(e.startswith("torch-xnor packed (triton")
                                                                        for e in engines)
        for row in rows:
            assert row["agreement"] == 100.0 and row["median_abs_diff"] <= 1e-4, row
    assert report["parts"]["parity_trained"]["result"]["source"].startswith("checkpoint")

    timings = report["parts"]["timings"]["result"]
    assert timings["layers"] and all(row[f"triton_{kind}_{algo}_us"] > 0 and row["cudnn_fp32_us"] > 0
                                     for row in timings["layers"] for kind in ("float_in", "bits")
                                     for algo in ("popcount", "dot"))
    sweep = timings["sweep"]  # the dot tile sweep: every configuration tried on each op, a best per op
    assert sweep["tried"] == sweep["configs"] == 2 and not sweep["not_run"]
    assert len(sweep["rows"]) == 2 * 2 and {b["op"] for b in sweep["best"]} == {"XnorConv2d", "XnorConv2dBitsBinarize"}
    assert all(b["best_us"] == min(r["us"] for r in sweep["rows"] if r["op"] == b["op"]) for b in sweep["best"])
    assert {row["engine"] for row in timings["whole"]} >= {"torch-xnor packed-bits", "float graph, cuDNN FP32"}

    train = report["parts"]["training"]["result"]
    assert train["epochs"] == 1 and train["time_limit_flag"] and train["exit_code"] == 0
    assert (out / "cifar10_nin_xnornet_best.pth.tar").stat().st_size > 100_000
    assert len([p for p in out.iterdir() if p.is_file()]) <= 8  # what the device tool returns


def test_dry_run_markdown_and_log(dry_run):
    _, out = dry_run
    md = (out / "gpu_session.md").read_text()
    for heading in ("## a. Kernel exactness", "## b. nin_xnornet parity", "## c. Timings", "## d. Training",
                    "## b2. nin_xnornet parity on the checkpoint"):
        assert heading in md
    assert "| Triton convolutions, dot |" in md and "| best tiles |" in md and "Compile farm" in md
    assert "**PASSED**" in md and "crashed" not in md
    log = (out / "gpu_session.log").read_text()
    assert "gpu_session exit 0" in log and "Traceback" not in log


def test_a_starved_budget_still_writes_its_reports(tmp_path, train_tree):
    """Out of time before the first part: nothing is verified, so the session fails, and says so."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_session.py"), "--dry-run", "--budget", "1",
                        "--data", str(train_tree.path), "--out", str(out), "--work", str(tmp_path / "work")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads((out / "gpu_session.json").read_text())
    assert report["passed"] is False
    assert all(p["status"] == "skipped" for p in report["parts"].values())
    assert "**FAILED**" in (out / "gpu_session.md").read_text()
